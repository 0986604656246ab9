"""Datasets for zero-shot evaluation: an IDX folder, an ImageFolder, or a torchvision dataset by name."""
import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch
from torch.utils.data import Dataset, Subset

from timm_spike.energy.data import SKIMAGE_PHOTOS

from .classnames import CLASSNAMES
from .idx import IDXDataset, is_idx_dir
from .images import load_image
from .templates import TEMPLATES

__all__ = ['get_classnames', 'get_templates', 'build_dataset', 'dataset_classnames', 'TORCHVISION_DATASETS']

_logger = logging.getLogger(__name__)

# Class names of the image sets bundled with timm_spike.energy (what a zero-shot classifier of them is given).
BUNDLED_CLASSNAMES = {
    'skimage': tuple(n.replace('_', ' ') for n in SKIMAGE_PHOTOS),
    'digits': ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'),
}

# Names build_dataset accepts for torchvision's readers (downloaded into `root` when download=True).
TORCHVISION_DATASETS = ('cifar10', 'cifar100', 'stl10', 'flowers102', 'oxford_pets', 'caltech101', 'fashion_mnist')


def _read_lines(path: Union[str, os.PathLike]) -> List[str]:
    with open(path, encoding='utf-8') as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith('#')]


def get_classnames(name_or_path: Union[str, os.PathLike]) -> List[str]:
    """Class names of a built-in set (``fashion_mnist``, ``cifar10``, ...) or of a text file (one per line).

    Repeated names are allowed (CLIP's ImageNet names repeat 'missile' and 'sunglasses') but logged: such
    classes get identical embeddings and cannot be told apart.

    Raises:
        ValueError: unknown name or empty file.
    """
    key = os.fspath(name_or_path)
    if key in CLASSNAMES:
        names = list(CLASSNAMES[key])
    elif os.path.isfile(key):
        names = _read_lines(key)
        if not names:
            raise ValueError(f'Class-name file {key} holds no class names (one per line expected)')
    else:
        raise ValueError(f'Unknown class names {key!r}: use one of {sorted(CLASSNAMES)} or a text file, one name a line')
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _logger.warning('Repeated class names in %s: %s (those classes get identical embeddings)', key, dupes)
    return names


def get_templates(name_or_path: Union[str, os.PathLike]) -> List[str]:
    """Prompt templates (``str.format`` strings with one ``{}``) of a built-in set or of a text file.

    Raises:
        ValueError: unknown name, empty file, or a template without ``{}``.
    """
    key = os.fspath(name_or_path)
    if key in TEMPLATES:
        return list(TEMPLATES[key])
    if not os.path.isfile(key):
        raise ValueError(f'Unknown templates {key!r}: use one of {sorted(TEMPLATES)} or a text file, one a line')
    templates = _read_lines(key)
    if not templates:
        raise ValueError(f'Template file {key} holds no templates (one per line, with {{}} for the class name)')
    bad = [t for t in templates if t.count('{}') != 1]
    if bad:
        raise ValueError(f'Templates need exactly one {{}} where the class name goes; {key} has: {bad[:3]}')
    return templates


def _torchvision_dataset(name: str, split: str, transform: Optional[Callable], root: str, download: bool,
                         seed: int) -> Dataset:
    from torchvision import datasets as tvd
    train = split == 'train'
    if name == 'cifar10':
        return tvd.CIFAR10(root, train=train, transform=transform, download=download)
    if name == 'cifar100':
        return tvd.CIFAR100(root, train=train, transform=transform, download=download)
    if name == 'fashion_mnist':
        return tvd.FashionMNIST(root, train=train, transform=transform, download=download)
    if name == 'stl10':
        return tvd.STL10(root, split=split, transform=transform, download=download)
    if name == 'flowers102':
        # torchvision reads the official split ids (the reference SpikeCLIP code swaps train and test)
        return tvd.Flowers102(root, split=split, transform=transform, download=download)
    if name == 'oxford_pets':
        return tvd.OxfordIIITPet(root, split='trainval' if train else 'test', transform=transform, download=download)
    if name == 'caltech101':
        # Caltech101 has no official split: the paper's seeded 80/20 split
        full = tvd.Caltech101(root, target_type='category', transform=transform, download=download)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
        n_train = int(round(0.8 * len(full)))
        return Subset(full, order[:n_train] if train else order[n_train:])
    raise ValueError(f'Unknown dataset {name!r}; torchvision datasets: {TORCHVISION_DATASETS}')


def build_dataset(
        name_or_path: Union[str, os.PathLike],
        split: str = 'test',
        transform: Optional[Callable] = None,
        root: Optional[Union[str, os.PathLike]] = None,
        download: bool = False,
        seed: int = 0,
) -> Dataset:
    """The dataset to evaluate on, from a folder or a name.

    Args:
        name_or_path: An IDX folder (Fashion-MNIST's files), an ImageFolder (one sub-folder per class; a
            ``<split>`` sub-folder of it is used if present), or a torchvision dataset name
            (``TORCHVISION_DATASETS``).
        split: 'train' or 'test'.
        transform: Image transform (e.g. the model's preprocess).
        root: Where torchvision datasets live / are downloaded (default ``~/.cache/spikeclip/data``).
        download: Let torchvision download a named dataset.
        seed: Seed of the 80/20 split of datasets without an official one (Caltech101).

    Raises:
        FileNotFoundError: a named dataset is not on disk (and could not be downloaded).
        ValueError: neither a folder nor a known name.
    """
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = os.fspath(name_or_path)
    if os.path.isdir(key):
        if is_idx_dir(key):
            return IDXDataset(key, split=split, transform=transform)
        from torchvision.datasets import ImageFolder
        folder = Path(key) / split if (Path(key) / split).is_dir() else Path(key)
        try:
            return ImageFolder(os.fspath(folder), transform=transform, loader=load_image)  # errors name the file
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f'{folder} is neither an IDX folder (train/t10k-images-idx3-ubyte[.gz] ...) nor an ImageFolder '
                f'with one sub-folder of images per class: {e}') from e
    if key not in TORCHVISION_DATASETS:
        raise ValueError(
            f'Dataset {key!r} is not a folder and not one of the torchvision datasets {TORCHVISION_DATASETS}')
    root = os.fspath(root) if root is not None else os.path.expanduser('~/.cache/spikeclip/data')
    try:
        return _torchvision_dataset(key, split, transform, root, download, seed)
    except (RuntimeError, OSError) as e:  # torchvision: 'Dataset not found or corrupted', network errors
        hint = 'check the network' if download else 'pass download=True with network access'
        raise FileNotFoundError(
            f'Could not load torchvision dataset {key!r} from {root}: {e}. To fix: {hint}, or pass a local '
            f'ImageFolder or IDX folder instead') from e


def dataset_classnames(name_or_path: Union[str, os.PathLike], dataset: Dataset) -> Optional[List[str]]:
    """Default class names for a dataset: the built-in set of a named dataset, an ImageFolder's folder names
    (underscores as spaces), the names of a bundled image set ('skimage', 'digits'), else None (the caller must provide them)."""
    key = os.fspath(name_or_path)
    if key in CLASSNAMES:
        return list(CLASSNAMES[key])
    if key in BUNDLED_CLASSNAMES:
        return list(BUNDLED_CLASSNAMES[key])
    classes = getattr(dataset, 'classes', None)
    if classes and not isinstance(dataset, IDXDataset):
        return [c.replace('_', ' ') for c in classes]
    return None
