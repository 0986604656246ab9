"""clip_benchmark (the tool open_clip's results tables come from) with SpikeCLIP models and local datasets.

clip_benchmark builds models only through its own table (``clip_benchmark.models.TYPE2FUNC``; ``open_clip`` calls
``open_clip.create_model_and_transforms``), so a SpikeCLIP config must be registered with open_clip first:
``import open_clip_spike`` does that, and ``spikeclip clip-benchmark`` (``open_clip_spike.cli.clip_benchmark``) is
clip_benchmark's own command line after that import.

Datasets clip_benchmark has no builder for (Fashion-MNIST's IDX files, any ImageFolder) reach it through its
local WebDataset format (``--dataset wds/<name> --dataset_root DIR``): ``export_wds`` writes one, with the class
names and templates of ``zero_shot.resolve_classnames_templates``, the rule ``spikeclip zeroshot`` uses, so both
tools build the same classifier.

Python::

    from open_clip_spike.benchmark import export_wds
    export_wds('/usr/share/datasets/fashion-mnist', 'out/wds_fashion_mnist', classnames='fashion_mnist')

then ``spikeclip clip-benchmark eval --dataset wds/fashion_mnist --dataset_root out/wds_fashion_mnist
--model SpikeCLIP-Tiny --pretrained tiny.safetensors``.
"""
import io
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Union

from torch.utils.data import Dataset, Subset

from timm_spike.layers import inference_form
from timm_spike.utils import atomic_write

from .data import build_dataset
from .zero_shot import resolve_classnames_templates

__all__ = ['export_wds', 'clip_benchmark_templates', 'patch_clip_benchmark', 'WDS_IMAGE_FORMAT']

_logger = logging.getLogger(__name__)

# Lossless, so clip_benchmark decodes the very pixels the dataset holds (the same top-1 as spikeclip zeroshot).
WDS_IMAGE_FORMAT = 'png'


def _accuracy(output, target, topk=(1,)):
    """clip_benchmark's ``accuracy`` (top-k fractions), with a scalar sum numpy >= 2.4 converts."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum()) / n for k in topk]


def _inference_loader(load):
    def load_open_clip(*args, **kwargs):
        model, transform, tokenizer = load(*args, **kwargs)
        return inference_form(model), transform, tokenizer
    load_open_clip.spikeclip_inference = True
    return load_open_clip


def patch_clip_benchmark() -> None:
    """Make clip_benchmark's zero-shot metrics run with numpy >= 2.4, and its models run as ``spikeclip zeroshot``
    runs them (idempotent).

    Written for clip_benchmark 1.6.2: ``metrics.zeroshot_classification.accuracy`` calls ``float()`` on a
    one-element 1-d array, which numpy 2.4 refuses (``TypeError: only 0-dimensional arrays can be converted to
    Python scalars``) on every dataset of 5 or more classes. The replacement computes the same fractions. Its
    open_clip loader (``models.TYPE2FUNC['open_clip']``) is wrapped to return the model in its inference form
    (``timm_spike.layers.inference_form``: event-driven spike layers on the CPU).
    """
    from clip_benchmark import models
    from clip_benchmark.metrics import zeroshot_classification
    zeroshot_classification.accuracy = _accuracy
    if not getattr(models.TYPE2FUNC['open_clip'], 'spikeclip_inference', False):
        models.TYPE2FUNC['open_clip'] = _inference_loader(models.TYPE2FUNC['open_clip'])


def clip_benchmark_templates(templates: Sequence[str]) -> List[str]:
    """This project's templates (``str.format`` with ``{}``) in clip_benchmark's form (``{c}``)."""
    return [t.replace('{}', '{c}') for t in templates]


class _PNGBytes(Dataset):
    """(PNG bytes, label) pairs of a dataset of (PIL image, label), with the classifier's names and templates."""

    def __init__(self, data: Dataset, classes: List[str], templates: List[str]):
        self.data, self.classes, self.templates = data, classes, templates

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image, label = self.data[i]
        buf = io.BytesIO()
        image.save(buf, format=WDS_IMAGE_FORMAT)
        return buf.getvalue(), int(label)


def export_wds(
        data: Union[str, os.PathLike],
        out: Union[str, os.PathLike],
        split: str = 'test',
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        limit: Optional[int] = None,
        overwrite: bool = False,
) -> Path:
    """Write a dataset as a clip_benchmark WebDataset folder (``--dataset wds/<name> --dataset_root <out>``).

    Args:
        data: An IDX folder (Fashion-MNIST's files), an ImageFolder, or a torchvision name ``build_dataset`` reads.
        out: Folder to write: ``<split>/0.tar`` (+ more shards), ``<split>/nshards.txt``, ``classnames.txt``,
            ``zeroshot_classification_templates.txt``.
        split: 'train' or 'test'.
        classnames, templates: As ``zero_shot.resolve_classnames_templates`` takes them (default: the dataset's).
        limit: Export only the first ``limit`` images.
        overwrite: Replace an existing ``<out>/<split>``.

    Returns:
        ``out``.

    Raises:
        ValueError: unknown data, no class names, a label outside them, or ``limit`` < 1.
        FileExistsError: ``<out>/<split>`` exists and not ``overwrite``.
    """
    from clip_benchmark.webdataset_builder import convert_dataset
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be >= 1, got {limit}')
    out = Path(out)
    if (out / split).exists():
        if not overwrite:
            raise FileExistsError(f'{out / split} exists; pick another folder or pass overwrite=True')
        shutil.rmtree(out / split)
    try:
        ds = build_dataset(data, split=split)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    names, temps = resolve_classnames_templates(classnames, templates, os.fspath(data), ds)
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    if len(ds) == 0:
        raise ValueError(f'{data} holds no images in its {split} split')
    labels = getattr(ds, 'targets', None)
    top = int(max(labels)) if labels is not None and len(labels) else None
    if top is not None and top >= len(names):
        raise ValueError(f'{data} has label {top} but only {len(names)} class names: the names do not fit the data')
    # convert_dataset writes classnames.txt / templates next to the shards; its loader needs nothing else
    convert_dataset(_PNGBytes(ds, names, clip_benchmark_templates(temps)), split, os.fspath(out), transform=None,
                    image_format=WDS_IMAGE_FORMAT, verbose=False)
    atomic_write(os.fspath(out / 'source.txt'), f'{os.path.abspath(os.fspath(data))} ({split} split)\n'.encode())
    _logger.info('wrote %d images of %s to %s (%d classes, %d templates)', len(ds), data, out, len(names), len(temps))
    return out
