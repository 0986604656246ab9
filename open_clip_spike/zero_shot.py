"""Zero-shot classification with SpikeCLIP (or any open_clip model): class embeddings from prompts, top-1/top-5.

Every command reaches class names and templates through ``resolve_classnames_templates`` (one rule, so one
dataset gets the same classifier from ``zeroshot``, ``sweep-t``, ``energy`` and ``train``).

Python::

    from open_clip_spike.zero_shot import zeroshot
    result = zeroshot('SpikeCLIP-Tiny', 'spikeclip_tiny.safetensors', '/path/to/fashion-mnist',
                      classnames='fashion_mnist')            # {'top1': ..., 'top5': ..., 'n': ..., ...}

Command line::

    spikeclip zeroshot --model SpikeCLIP-Tiny --pretrained spikeclip_tiny.safetensors \\
        --dataset /path/to/fashion-mnist --classnames fashion_mnist --output zeroshot.json

``--T N`` (``T=N``) evaluates at N time steps instead of the T the model was trained with (readout 'mean').
"""
import contextlib
import inspect
import json
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import open_clip
from open_clip import build_zero_shot_classifier

from timm_spike.layers import get_spike_kernel, inference_form, is_inference_form
from timm_spike.layers.guards import check_max_time_steps
from timm_spike.utils import atomic_write

from .checkpoint import check_checkpoint_file

from .data import TEMPLATES, build_dataset, dataset_classnames, get_classnames, get_templates
from .factory import register_model_configs
from .model import SpikeCLIP

__all__ = ['autocast', 'build_classifier', 'check_classnames_fit', 'check_inference_T', 'dataset_num_classes',
           'eval_mode', 'evaluate', 'resolve_classnames_templates',
           'zeroshot', 'PRECISIONS']

_logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode (BN running stats, no dropout) and restore each module's training flag afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast(device: Union[str, torch.device], precision: str = 'fp32'):
    """The autocast context of a precision: 'fp32' (none), 'bf16' or 'fp16' (mixed precision on ``device``)."""
    if precision not in PRECISIONS:
        raise ValueError(f'Unknown precision {precision!r}; choose one of {list(PRECISIONS)}')
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def check_inference_T(model_name: str, T: Optional[int]) -> Dict[str, Any]:
    """Check that a SpikeCLIP model can run at ``T`` time steps; return the model kwargs for open_clip.

    A checkpoint trained at one T loads at any other when the readout over time is 'mean' (no weight
    depends on T). A 'weighted' readout has one learned weight per trained time step, so it is refused.

    Args:
        model_name: open_clip model name, ``hf-hub:org/repo`` or ``local-dir:path``.
        T: Time steps to run at; None keeps the model's own.

    Returns:
        ``{'T': T}`` for ``open_clip.create_model(..., **kwargs)``, or ``{}`` when T is None.

    Raises:
        ValueError: T is not a positive integer, the model is not a SpikeCLIP, or its readout is 'weighted'
            and T differs from the T it was built with.
    """
    if T is None:
        return {}
    check_max_time_steps(T)  # before any model is built
    register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f'Unknown model {model_name!r}: not a registered open_clip config, hf-hub: or local-dir: name')
    if cfg.get('model_class') != 'SpikeCLIP':
        raise ValueError(f'{model_name!r} is not a SpikeCLIP model: only spiking models have time steps (drop --T)')
    # the config's defaults are SpikeCLIP's own: read them from its signature, not a second copy here
    defaults = {k: v.default for k, v in inspect.signature(SpikeCLIP.__init__).parameters.items()}
    trained_T = cfg.get('T', defaults['T'])
    readout = cfg.get('readout', defaults['readout'])
    if readout != 'mean' and T != trained_T:
        raise ValueError(
            f"{model_name!r} has readout={readout!r}, with one learned weight per time step for T={trained_T}: "
            f"it cannot run at T={T}. Evaluate it at T={trained_T}, or train a model with readout='mean' "
            f"to change T after training")
    return {'T': T}


def _as_list(value: Union[str, Sequence[str]], getter) -> List[str]:
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if ',' in text and not os.path.exists(text) and '{}' not in text:  # "cat,dog,..." given inline
            return [c.strip() for c in text.split(',') if c.strip()]
        return getter(text)
    return list(value)


def resolve_classnames_templates(
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        dataset_name: Optional[str] = None,
        data: Optional[Dataset] = None,
) -> Tuple[List[str], List[str]]:
    """The class names and prompt templates of a zero-shot classifier, by one rule for every command.

    Class names: as given (a built-in set such as ``fashion_mnist``, a text file with one name a line,
    ``"cat,dog,..."``, or a list), else the dataset's (a named dataset's built-in set, an ImageFolder's folder
    names, a bundled image set's names). Templates: as given (a built-in set, a text file or a list), else the
    built-in templates of the class-name set or of the dataset, else ``simple`` ('a photo of a {}.').

    Raises:
        ValueError: no class names can be found, or a set / file is unknown or empty.
    """
    given = classnames
    if classnames is None:
        classnames = dataset_classnames(dataset_name, data) if dataset_name is not None else None
        if classnames is None:
            raise ValueError(f'No class names known for dataset {dataset_name!r}: pass classnames, a built-in set '
                             f'such as fashion_mnist, a text file or "cat,dog,..."')
        _logger.info('Class names: %s', classnames if len(classnames) <= 10 else f'{len(classnames)} classes')
    if templates is None:
        keys = [k for k in (given, dataset_name) if isinstance(k, str)]
        templates = next((k for k in keys if k in TEMPLATES), 'simple')
    names = _as_list(classnames, get_classnames)
    temps = _as_list(templates, get_templates)
    if not names:
        raise ValueError('No class names given')
    if not temps:
        raise ValueError('No templates given')
    bad = [t for t in temps if not isinstance(t, str) or t.count('{}') != 1]
    if bad:
        raise ValueError(f'Templates need exactly one {{}} where the class name goes, got {bad[:3]}')
    return names, temps


def dataset_num_classes(data: Dataset) -> Optional[int]:
    """How many classes a dataset's labels index: ``len(classes)``, an IDX split's largest label + 1, else None."""
    while isinstance(data, Subset):
        data = data.dataset
    classes = getattr(data, 'classes', None)
    if classes:
        return len(classes)
    targets = getattr(data, 'targets', None)
    if targets is not None and len(targets):
        return int(max(int(t) for t in targets)) + 1
    return None


def check_classnames_fit(classnames: Sequence[str], data: Dataset, dataset_name: Optional[str] = None) -> None:
    """Refuse class names whose count differs from the dataset's classes (the scores would mean nothing)."""
    n = dataset_num_classes(data)
    if n is not None and len(classnames) != n:
        raise ValueError(
            f'{len(classnames)} class names for {dataset_name or "a dataset"} with {n} classes: give one name per '
            f'class, in label order (--classnames), or leave it out for the dataset\'s own')


def build_classifier(
        model: nn.Module,
        tokenizer,
        classnames: Union[str, Sequence[str]],
        templates: Union[str, Sequence[str]],
        device: Union[str, torch.device] = 'cpu',
        classes_per_batch: int = 10,
        progress: bool = False,
        precision: str = 'fp32',
) -> torch.Tensor:
    """Class embeddings [embed_dim, num_classes]: per class, the normalised mean of its normalised prompt embeddings.

    Uses open_clip's ``build_zero_shot_classifier`` in eval mode. With SpikeCLIP each class embedding does
    not depend on the other classes or their order (neurons start from rest on every call).

    Args:
        model: An open_clip model (``encode_text``).
        tokenizer: The model's tokenizer (``open_clip.get_tokenizer(model_name)``).
        classnames: Class names, or a built-in set name / text file for ``get_classnames``.
        templates: ``str.format`` templates with one ``{}``, or a built-in set name / text file.
        device: Device the model is on.
        classes_per_batch: Classes encoded per forward pass.
        progress: Show a progress bar.
        precision: 'fp32', or 'bf16' / 'fp16' autocast (the embeddings are returned as float32).
    """
    classnames, templates = resolve_classnames_templates(classnames, templates)
    with eval_mode(model), autocast(device, precision):
        classifier = build_zero_shot_classifier(
            model, tokenizer, classnames, templates,
            num_classes_per_batch=classes_per_batch, device=device, use_tqdm=progress)
    return classifier.float()


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Union[DataLoader, Sequence],
        classifier: torch.Tensor,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        precision: str = 'fp32',
) -> Dict[str, Any]:
    """Top-1 / top-5 accuracy of ``normalize(encode_image(x)) @ classifier`` over a loader of (image, label).

    Counts are exact (not averaged per batch). With fewer than 5 classes, top5 counts the top min(5, C).
    open_clip_train's ``zero_shot.accuracy`` is not used: it breaks with numpy >= 2.4. ``precision`` 'bf16' or
    'fp16' runs the image tower under autocast (logits in float32).

    Returns:
        dict(top1=fraction, top5=fraction, n=number of images).
    """
    num_classes = classifier.shape[1]
    k = min(5, num_classes)
    classifier = classifier.to(device)
    correct1 = correct5 = n = 0
    cast = autocast(device, precision)
    with eval_mode(model):
        for images, target in tqdm(loader, desc='zero-shot', unit='batch', disable=not progress):
            images, target = images.to(device), torch.as_tensor(target).to(device)
            if target.numel() and (target.min() < 0 or target.max() >= num_classes):
                raise ValueError(f'Label {int(target.max())} out of range for {num_classes} class embeddings; '
                                 f'the class names do not match the dataset')
            with cast:
                features = F.normalize(model.encode_image(images).float(), dim=-1)
            logits = features @ classifier.float()
            topk = logits.topk(k, dim=1).indices
            hits = topk == target[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            n += len(target)
    if n == 0:
        raise ValueError('The dataset is empty: nothing to evaluate')
    return dict(top1=correct1 / n, top5=correct5 / n, n=n)


def _write_json(obj: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    # temp file + rename: an interrupted run leaves no half-written result
    atomic_write(os.fspath(path), (json.dumps(obj, indent=2) + '\n').encode())


def zeroshot(
        model_name: str,
        pretrained: Optional[str] = None,
        dataset: Union[str, os.PathLike, Dataset] = 'cifar10',
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        split: str = 'test',
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        data_root: Optional[str] = None,
        download: bool = False,
        limit: Optional[int] = None,
        output: Optional[Union[str, os.PathLike]] = None,
        progress: bool = True,
        T: Optional[int] = None,
        precision: str = 'fp32',
) -> Dict[str, Any]:
    """Build a model, its classifier from prompts, and evaluate it on a dataset.

    Args:
        model_name: open_clip model name (e.g. ``SpikeCLIP-Tiny``), ``hf-hub:org/repo`` or ``local-dir:path``.
        pretrained: Checkpoint file (safetensors or torch state dict) or open_clip tag; None for random weights.
        dataset: IDX folder, ImageFolder, torchvision dataset name, or a Dataset of (preprocessed image, label).
        classnames: Built-in set, text file or list; default: the dataset's (named dataset or ImageFolder).
        templates: Built-in set, text file or list; default: the class-name set's templates, else 'simple'.
        split: 'train' or 'test'.
        batch_size: Images per batch.
        workers: DataLoader workers.
        device: Device to run on.
        data_root: Folder of torchvision datasets.
        download: Let torchvision download a named dataset.
        limit: Evaluate only the first ``limit`` images.
        output: Write the result as JSON here.
        progress: Show progress bars.
        T: Time steps of both towers at evaluation (a SpikeCLIP with readout 'mean'); None: the model's own.
        precision: 'fp32', or 'bf16' / 'fp16' autocast for both towers (weights stay float32).

    Returns:
        dict(top1, top5, n, model, pretrained, dataset, split, num_classes, num_templates, T, precision,
        spike_kernel, seconds); T is None for a model without time steps; spike_kernel is the switch in force where
        the spike-input layers ran event-driven ('auto' or 'sparse'), else 'dense'; seconds: the evaluation's wall
        time.
    """
    register_model_configs()
    autocast(device, precision)  # an unknown precision fails before any work
    kwargs = check_inference_T(model_name, T)
    check_checkpoint_file(pretrained)  # a missing, truncated or pickled file: one line, before any model is built
    for name, value, low in (('batch_size', batch_size, 1), ('workers', workers, 0), ('limit', limit, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, **kwargs)
    model = inference_form(model, device)  # event-driven spike layers on the CPU (timm_spike.set_spike_kernel)
    tokenizer = open_clip.get_tokenizer(model_name)

    if isinstance(dataset, Dataset):
        data, dataset_name = dataset, type(dataset).__name__
    else:
        data, dataset_name = build_dataset(dataset, split, preprocess, data_root, download), os.fspath(dataset)
    classnames, templates = resolve_classnames_templates(classnames, templates, dataset_name, data)
    check_classnames_fit(classnames, data, dataset_name)
    if limit is not None:
        data = Subset(data, range(min(int(limit), len(data))))
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)

    start = time.perf_counter()
    classifier = build_classifier(model, tokenizer, classnames, templates, device=device, progress=progress,
                                  precision=precision)
    result = evaluate(model, loader, classifier, device=device, progress=progress, precision=precision)
    result.update(model=model_name, pretrained=pretrained, dataset=dataset_name, split=split,
                  num_classes=len(classnames), num_templates=len(templates), T=getattr(model, 'T', None),
                  precision=precision, spike_kernel=get_spike_kernel() if is_inference_form(model) else 'dense',
                  seconds=time.perf_counter() - start)
    _logger.info('Zero-shot %s on %s: top-1 %.4f, top-5 %.4f (%d images)',
                 model_name, dataset_name, result['top1'], result['top5'], result['n'])
    if output is not None:
        _write_json(result, output)
    return result
