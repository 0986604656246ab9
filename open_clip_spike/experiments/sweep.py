"""Accuracy against energy over the number of time steps T: one trained SpikeCLIP, evaluated at several T.

A SpikeCLIP with readout 'mean' runs at any T after training. Fewer steps mean fewer synaptic operations
(less energy per image) and usually lower accuracy; the sweep measures both on the same images and marks the
Pareto-optimal T (no other T is at least as accurate for at most the same energy).

Python::

    from open_clip_spike.experiments.sweep import sweep_t, write_sweep
    points = sweep_t('SpikeCLIP-Tiny', 'spikeclip_tiny.safetensors', '/path/to/fashion-mnist',
                     Ts=[1, 2, 4, 8], classnames='fashion_mnist')
    write_sweep(points, 'sweep/')

Command line::

    spikeclip sweep-t --model SpikeCLIP-Tiny --pretrained spikeclip_tiny.safetensors \\
        --dataset /path/to/fashion-mnist --classnames fashion_mnist --T 1 2 4 8 --out sweep/

writes sweep/sweep_t.md, sweep_t.csv, sweep_t.json and sweep_t.png (top-1 against energy per image, points
labelled by T). ``--pretrained`` takes several checkpoints of the same model (e.g. trained with and without
``--spike-rate-weight``): one curve each, named by ``--labels`` or the file names. Energy is the image tower's (``timm_spike.energy``): the class embeddings are computed once
per classifier, not per image.
"""
import csv
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import open_clip
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from timm_spike.energy import EnergyConstants, energy_report
from timm_spike.energy.plot import save_figure
from timm_spike.utils import atomic_write

from ..checkpoint import check_checkpoint_file
from ..data import build_dataset
from ..factory import register_model_configs
from ..zero_shot import (
    build_classifier, check_classnames_fit, check_inference_T, evaluate, resolve_classnames_templates)

__all__ = ['SweepPoint', 'sweep_t', 'pareto_front', 'write_sweep', 'plot_sweep']

_logger = logging.getLogger(__name__)

FILE_STEM = 'sweep_t'


@dataclass
class SweepPoint:
    """Zero-shot accuracy and image-tower energy of one model at one T."""
    T: int
    top1: float
    top5: float
    n: int
    energy_mj_per_image: float
    sops_per_image: float
    macs_per_image: float
    mean_firing_rate: Optional[float]
    pareto: bool = False
    label: str = ''


def pareto_front(points: Sequence[SweepPoint]) -> List[bool]:
    """For each point: True when no other point has top-1 >= and energy <= it with one of them strictly better."""
    flags = []
    for p in points:
        dominated = any(
            q.top1 >= p.top1 and q.energy_mj_per_image <= p.energy_mj_per_image
            and (q.top1 > p.top1 or q.energy_mj_per_image < p.energy_mj_per_image)
            for q in points)
        flags.append(not dominated)
    return flags


def sweep_t(
        model_name: str,
        pretrained: Optional[str],
        dataset: Union[str, os.PathLike, Dataset],
        Ts: Sequence[int] = (1, 2, 4, 8),
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        split: str = 'test',
        batch_size: int = 64,
        limit: Optional[int] = None,
        device: Union[str, torch.device] = 'cpu',
        data_root: Optional[str] = None,
        constants: Optional[EnergyConstants] = None,
        progress: bool = True,
        label: str = '',
) -> List[SweepPoint]:
    """Zero-shot top-1/top-5 and image-tower energy per image of one checkpoint at each T in ``Ts``.

    Both towers run at each T (the class embeddings are rebuilt at that T). Accuracy and energy are
    measured on the same images.

    Args:
        model_name: A SpikeCLIP model config, ``hf-hub:org/repo`` or ``local-dir:path``.
        pretrained: Checkpoint (safetensors or torch state dict); None only for hf-hub:/local-dir: names.
        dataset: IDX folder, ImageFolder, torchvision dataset name, or a Dataset of (preprocessed image, label).
        Ts: Time steps to evaluate at (distinct integers >= 1; readout 'mean' for any T but the trained one).
        classnames: Built-in set, text file or list; default: the dataset's.
        templates: Built-in set, text file or list; default: the class-name set's, else 'simple'.
        split: 'train' or 'test'.
        batch_size: Images per batch.
        limit: Use only the first ``limit`` images.
        device: Device to run on.
        data_root: Folder of torchvision datasets.
        constants: Energy per MAC / AC (default 4.6 / 0.9 pJ).
        progress: Show progress bars.
        label: Name of this checkpoint's curve (``SweepPoint.label``).

    Returns:
        One ``SweepPoint`` per T, in the order given, with ``pareto`` set (among these points).
    """
    Ts = [int(t) for t in Ts] if not isinstance(Ts, (int, str)) else None
    if not Ts:
        raise ValueError('Ts must be a non-empty list of time steps, e.g. [1, 2, 4, 8]')
    if len(set(Ts)) != len(Ts):
        raise ValueError(f'Ts has repeated values: {Ts}')
    register_model_configs()
    kwargs_per_T = {T: check_inference_T(model_name, T) for T in Ts}  # refuse a bad T before any work
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be >= 1, got {limit}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    check_checkpoint_file(pretrained)  # a missing, truncated or pickled file: one line, before any model is built

    points = []
    loader = classnames_ = templates_ = tokenizer = None
    for T in Ts:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, **kwargs_per_T[T])
        model.eval()
        if loader is None:  # preprocessing does not depend on T: build the data once
            if isinstance(dataset, Dataset):
                data, dataset_name = dataset, type(dataset).__name__
            else:
                data, dataset_name = build_dataset(dataset, split, preprocess, data_root), os.fspath(dataset)
            classnames_, templates_ = resolve_classnames_templates(classnames, templates, dataset_name, data)
            check_classnames_fit(classnames_, data, dataset_name)
            if limit is not None:
                data = Subset(data, range(min(int(limit), len(data))))
            if len(data) == 0:
                raise ValueError('The dataset is empty: nothing to evaluate')
            loader = DataLoader(data, batch_size=batch_size, shuffle=False)
            tokenizer = open_clip.get_tokenizer(model_name)
        classifier = build_classifier(model, tokenizer, classnames_, templates_, device=device)
        acc = evaluate(model, loader, classifier, device=device, progress=progress)
        size = model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        report = energy_report(
            model.visual, ((x.to(device), y) for x, y in loader), model_name=f'{model_name} image tower',
            data_name=str(dataset), input_size=[3, *size], constants=constants, progress=progress)
        if report.T != T:
            raise RuntimeError(f'The image tower ran at T={report.T}, asked for T={T}')
        points.append(SweepPoint(
            T=T, top1=acc['top1'], top5=acc['top5'], n=acc['n'], energy_mj_per_image=report.energy_mj,
            sops_per_image=report.sops, macs_per_image=report.macs, mean_firing_rate=report.mean_firing_rate,
            label=label))
        _logger.info('T=%d: top-1 %.4f, top-5 %.4f, %.4g mJ/image', T, acc['top1'], acc['top5'], report.energy_mj)
    for p, flag in zip(points, pareto_front(points)):
        p.pareto = flag
    return points


_COLUMNS = ('label', 'T', 'top1', 'top5', 'n', 'energy_mj_per_image', 'sops_per_image', 'macs_per_image',
            'mean_firing_rate', 'pareto')


def _labels(points: Sequence[SweepPoint]) -> List[str]:
    return list(dict.fromkeys(p.label for p in points))  # in order of appearance


def sweep_markdown(points: Sequence[SweepPoint], title: str) -> str:
    several = len(_labels(points)) > 1
    lines = [f'# {title}', '',
             ('| checkpoint ' if several else '') +
             '| T | top-1 | top-5 | images | energy (mJ/image) | SOPs/image | MACs/image | mean firing rate | Pareto |',
             ('|:---' if several else '') + '|---:|---:|---:|---:|---:|---:|---:|---:|:---:|']
    for p in points:
        rate = '' if p.mean_firing_rate is None else f'{p.mean_firing_rate:.4f}'
        lines.append((f'| {p.label} ' if several else '') + f'| {p.T} | {100 * p.top1:.2f}% | {100 * p.top5:.2f}% | {p.n} | {p.energy_mj_per_image:.4g} '
                     f'| {p.sops_per_image:.4g} | {p.macs_per_image:.4g} | {rate} | {"yes" if p.pareto else ""} |')
    return '\n'.join(lines) + '\n'


def _csv(points: Sequence[SweepPoint]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator='\n')
    w.writeheader()
    for p in points:
        w.writerow(asdict(p))
    return buf.getvalue()


def plot_sweep(points: Sequence[SweepPoint], path: str, title: Optional[str] = None) -> str:
    """PNG of top-1 (%) against image-tower energy per image, points labelled by T; per checkpoint label, its
    points and its Pareto front (a line through the non-dominated points)."""
    try:
        import matplotlib
        matplotlib.use('Agg')  # headless
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("The sweep plot needs matplotlib: pip install 'spikeclip[plot]'") from e
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    for i, label in enumerate(_labels(points)):
        color = f'C{i}'
        pts = sorted((p for p in points if p.label == label), key=lambda p: p.energy_mj_per_image)
        ax.plot([p.energy_mj_per_image for p in pts], [100 * p.top1 for p in pts], 'o', color=color, alpha=0.5)
        front = [p for p in pts if p.pareto]
        ax.plot([p.energy_mj_per_image for p in front], [100 * p.top1 for p in front], 'o-', color=color,
                label=f'{label + ": " if label else ""}Pareto front')
        for p in pts:
            ax.annotate(f'T={p.T}', (p.energy_mj_per_image, 100 * p.top1), textcoords='offset points',
                        xytext=(5, 5), fontsize=9, color=color)
    ax.set_xlabel('image-tower energy (mJ / image)')
    ax.set_ylabel('zero-shot top-1 (%)')
    ax.set_title(title or 'accuracy vs energy over time steps T')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_sweep(
        points: Sequence[SweepPoint],
        out_dir: Union[str, os.PathLike],
        meta: Optional[Dict[str, Any]] = None,
        title: Optional[str] = None,
) -> List[str]:
    """Write ``sweep_t.{png,md,csv,json}`` to ``out_dir`` (each file written whole or not at all).

    Args:
        points: ``sweep_t`` output.
        out_dir: Output folder (created).
        meta: Extra keys for the JSON (model, checkpoint, dataset ...).
        title: Title of the table and plot.
    """
    if not points:
        raise ValueError('No sweep points to write')
    out_dir = os.fspath(out_dir)
    title = title or 'Accuracy and energy per image over time steps T'
    stem = os.path.join(out_dir, FILE_STEM)
    paths = [plot_sweep(points, stem + '.png', title)]  # the plot first: the step that can fail (matplotlib)
    for ext, text in (('.md', sweep_markdown(points, title)), ('.csv', _csv(points)),
                      ('.json', json.dumps(dict(meta or {}, points=[asdict(p) for p in points]), indent=2) + '\n')):
        atomic_write(stem + ext, text.encode())
        paths.append(stem + ext)
    return paths
