"""``spikeclip ablate``: the paper's tower comparisons on the offline demo data, in one command, one table.

The SpikeCLIP paper compares spiking image encoders (with its MLP text encoder) and, for one image encoder, the
spiking MLP against a spiking transformer as text encoder, and reports accuracy against the number of time steps.
This command reproduces those comparisons at CPU scale on Fashion-MNIST:

1. one config per (image tower, text tower) pair, written to ``OUT/configs`` (the towers shrunk alike to the
   size of ``SpikeCLIP-Tiny``, so the comparison is of architectures, not of sizes; the parameter counts are in
   the table);
2. per pair, the demo's pipeline (`open_clip_spike.experiments.demo.run_demo`): stage 1 alignment and stage 2 dual-loss
   fine-tuning against one shared teacher (trained once by the first pair's run, or ``--teacher-pretrained``);
   every run resumes where it stopped, so an interrupted ablation picks up at the pair it was in;
3. per trained student, zero-shot top-1/top-5 and image-tower energy per image at each T of ``--T``
   (`open_clip_spike.experiments.sweep.sweep_t`, trained at T=4, evaluated at any T thanks to the mean readout);
4. ``OUT/ablation.md`` / ``.csv`` / ``.json`` (one row per pair and T) and ``OUT/ablation.png`` (accuracy
   against energy, one curve per pair, via the sweep plot).

Grids: ``paper`` (default) = every image tower with the MLP text tower, plus the Spikingformer tower with the
transformer text tower; ``full`` = every image tower with every text tower. ``--image-towers`` and
``--text-towers`` pick subsets.
"""
import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import open_clip

from timm_spike.utils import atomic_write

from ..factory import CONFIG_PATH_ENV, MODEL_CONFIG_DIR, register_model_configs

__all__ = ['IMAGE_TOWERS', 'TEXT_TOWERS', 'ablation_grid', 'write_ablation_configs', 'run_ablation']

_logger = logging.getLogger(__name__)

# timm_spike model and the keyword overrides that give each family a SpikeCLIP-Tiny-sized CPU tower
# (one block, width 128 for the transformers; one block per stage for the ResNet, whose widths are fixed).
IMAGE_TOWERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'spikingformer': ('spikingformer_clip', dict(embed_dim=128, depth=1, num_heads=4, stem='cifar_light')),
    'spikformer': ('spikformer_clip', dict(embed_dim=128, depth=1, num_heads=4)),
    'sdt': ('sdt_clip', dict(embed_dim=128, depth=1, num_heads=4)),
    'qkformer': ('qkformer_clip', dict(embed_dim=128, depths=[1, 1, 1], num_heads=4)),
    'sew_resnet': ('sew_resnet18_clip', dict(layers=[1, 1, 1, 1])),
}
# text_cfg of each text tower: those of the shipped Tiny configs
TEXT_TOWERS: Dict[str, str] = {
    'mlp': 'SpikeCLIP-Tiny',
    'transformer': 'SpikeCLIP-Tiny-TextTransformer',
}
GRIDS = ('paper', 'full')
PAIR_SEP = '+'


def ablation_grid(grid: str = 'paper', image_towers: Optional[Sequence[str]] = None,
                  text_towers: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """The (image tower, text tower) pairs to train, in order."""
    if grid not in GRIDS:
        raise ValueError(f'Unknown grid {grid!r}; choose one of {GRIDS}')
    images = list(image_towers or IMAGE_TOWERS)
    texts = list(text_towers or TEXT_TOWERS)
    for name, known, kind in ((images, IMAGE_TOWERS, 'image'), (texts, TEXT_TOWERS, 'text')):
        bad = [n for n in name if n not in known]
        if bad:
            raise ValueError(f'Unknown {kind} towers {bad}; choose from {list(known)}')
    if grid == 'full':
        return [(i, t) for i in images for t in texts]
    pairs = [(i, texts[0]) for i in images]  # every image tower with the first text tower (the MLP)
    base = images[0]  # and the first image tower with every other text tower
    pairs += [(base, t) for t in texts[1:]]
    return pairs


def config_name(image: str, text: str) -> str:
    return f'SpikeCLIP-Ablate-{image}{PAIR_SEP}{text}'


def _shipped(name: str) -> Dict[str, Any]:
    return json.loads((MODEL_CONFIG_DIR / f'{name}.json').read_text())


def write_ablation_configs(pairs: Sequence[Tuple[str, str]], config_dir: str) -> List[str]:
    """One SpikeCLIP model config per pair (the Tiny config with the image tower and text_cfg swapped)."""
    os.makedirs(config_dir, exist_ok=True)
    names = []
    for image, text in pairs:
        cfg = _shipped('SpikeCLIP-Tiny')
        timm_name, kwargs = IMAGE_TOWERS[image]
        cfg['vision_cfg'] = dict(cfg['vision_cfg'], timm_model_name=timm_name, timm_model_kwargs=dict(kwargs))
        cfg['text_cfg'] = _shipped(TEXT_TOWERS[text])['text_cfg']
        name = config_name(image, text)
        atomic_write(os.path.join(config_dir, f'{name}.json'), (json.dumps(cfg, indent=2) + '\n').encode())
        names.append(name)
    return names


def _params(model_name: str) -> Dict[str, int]:
    model = open_clip.create_model(model_name)  # CPU-scale towers: a real build takes well under a second
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return dict(image=count(model.visual), text=count(model.text))


def run_ablation(
        out: str,
        pairs: Sequence[Tuple[str, str]],
        Ts: Sequence[int] = (1, 2, 4, 8),
        eval_images: int = 1000,
        teacher_pretrained: Optional[str] = None,
        progress: bool = True,
        **demo_overrides: Any,
) -> List[Dict[str, Any]]:
    """Train every pair (resuming finished work), sweep T, write the table; return its rows."""
    from .demo import DemoConfig, find_fashion_mnist, run_demo
    from .sweep import sweep_t, write_sweep

    os.makedirs(out, exist_ok=True)
    config_dir = os.path.abspath(os.path.join(out, 'configs'))
    names = write_ablation_configs(pairs, config_dir)
    # the configs reach every process a stage starts (data loader workers) through the environment
    paths = [p for p in os.environ.get(CONFIG_PATH_ENV, '').split(os.pathsep) if p]
    if config_dir not in paths:
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join(paths + [config_dir])
    register_model_configs()
    open_clip.add_model_config(config_dir)  # rescan: the folder may have been registered before its files

    teacher = teacher_pretrained
    rows, points = [], []
    for (image, text), name in zip(pairs, names):
        run_dir = os.path.join(out, 'runs', f'{image}{PAIR_SEP}{text}')
        cfg = DemoConfig(out=run_dir, student=name, teacher_pretrained=teacher, test_images=eval_images,
                         bf16_eval=False, progress=progress, **demo_overrides)
        print(f'\n=== {image} image tower + {text} text tower ({name}) ===', flush=True)
        summary = run_demo(cfg)
        if teacher is None:
            teacher = os.path.join(run_dir, 'teacher.safetensors')  # trained by the first pair's run
        sweep_json = os.path.join(run_dir, 'sweep', 'sweep_t.json')
        if os.path.exists(sweep_json):
            from .sweep import SweepPoint
            pts = [SweepPoint(**p) for p in json.loads(Path(sweep_json).read_text())['points']]
        else:
            pts = sweep_t(name, os.path.join(run_dir, 'dual.safetensors'), find_fashion_mnist(cfg.data),
                          Ts=Ts, classnames='fashion_mnist', templates='fashion_mnist', limit=eval_images,
                          batch_size=250, progress=progress, label=f'{image}{PAIR_SEP}{text}')
            write_sweep(pts, os.path.dirname(sweep_json), meta=dict(model=name))
        params = _params(name)
        train_s = sum(summary['stage_seconds'].get(k, 0.0) for k in ('align', 'dual'))
        for p in pts:
            rows.append(dict(image_tower=image, text_tower=text, model=name, image_params=params['image'],
                             text_params=params['text'], T=p.T, top1=p.top1, top5=p.top5, n=p.n,
                             energy_uj_per_image=1e3 * p.energy_mj_per_image, sops_per_image=p.sops_per_image,
                             mean_firing_rate=p.mean_firing_rate, pareto=p.pareto, train_seconds=train_s,
                             teacher_top1=summary['teacher_top1']))
        points += pts
    _write(out, rows, points, Ts)
    return rows


_COLUMNS = ('image_tower', 'text_tower', 'image_params', 'text_params', 'T', 'top1', 'top5', 'n',
            'energy_uj_per_image', 'sops_per_image', 'mean_firing_rate', 'pareto', 'train_seconds', 'model',
            'teacher_top1')


def to_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    lines = ['# SpikeCLIP tower ablation (Fashion-MNIST, zero-shot)', '',
             f'Teacher top-1: {100 * rows[0]["teacher_top1"]:.2f}%. Students trained at T=4, evaluated at each T '
             f'on {rows[0]["n"]} test images; energy of the image tower per image.', '',
             '| image tower | text tower | params (image / text) | T | top-1 | top-5 | energy (uJ/image) | '
             'mean firing rate | Pareto (per pair) | train s |',
             '|---|---|---|---:|---:|---:|---:|---:|:---:|---:|']
    for r in rows:
        rate = '' if r['mean_firing_rate'] is None else f'{r["mean_firing_rate"]:.3f}'
        lines.append(
            f'| {r["image_tower"]} | {r["text_tower"]} | {r["image_params"] / 1e6:.2f}M / {r["text_params"] / 1e6:.2f}M '
            f'| {r["T"]} | {100 * r["top1"]:.2f}% | {100 * r["top5"]:.2f}% | {r["energy_uj_per_image"]:.2f} | {rate} '
            f'| {"yes" if r["pareto"] else ""} | {r["train_seconds"]:.0f} |')
    return '\n'.join(lines) + '\n'


def _write(out: str, rows: Sequence[Dict[str, Any]], points, Ts) -> None:
    from .sweep import plot_sweep
    plot_sweep(points, os.path.join(out, 'ablation.png'), title='SpikeCLIP towers: top-1 vs energy over T')
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator='\n')
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in _COLUMNS})
    atomic_write(os.path.join(out, 'ablation.csv'), buf.getvalue().encode())
    atomic_write(os.path.join(out, 'ablation.json'), (json.dumps(dict(T=list(Ts), rows=list(rows)), indent=2)
                                                      + '\n').encode())
    md = to_markdown(rows)
    atomic_write(os.path.join(out, 'ablation.md'), md.encode())
    print(md)
