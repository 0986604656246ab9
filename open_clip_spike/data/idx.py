"""IDX files (the MNIST / Fashion-MNIST format) as a torch Dataset.

torchvision's FashionMNIST reader wants its own folder layout (``<root>/FashionMNIST/raw``) and uncompressed
files; this reader takes any folder holding the canonical files, compressed (``.gz``, as distributed and as
Debian's ``dataset-fashion-mnist`` installs them) or not.
"""
import gzip
import logging
import os
import struct
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ['IDXDataset', 'read_idx', 'find_idx_files', 'is_idx_dir']

_logger = logging.getLogger(__name__)

# IDX type codes (third byte of the magic number) -> numpy dtype (big-endian, as the format stores them)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
_SPLIT_PREFIX = {'train': 'train', 'test': 't10k'}


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) into a numpy array of its stored shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for damaged files
        raise ValueError(f'Cannot read IDX file {path}: {e}') from e
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] not in _IDX_DTYPES:
        raise ValueError(f'{path} is not an IDX file (bad magic number {data[:4].hex() or "<empty>"})')
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f'{path}: truncated IDX header')
    dims = struct.unpack(f'>{ndim}I', data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f'{path}: header says shape {dims} ({expected} bytes of data) but the file holds {len(data) - header}')
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Optional[Path]:
    # canonical 'train-images-idx3-ubyte', and the 'train-images.idx3-ubyte' spelling some mirrors use
    for name in (stem, stem.replace('-idx', '.idx')):
        for suffix in ('', '.gz'):
            p = root / (name + suffix)
            if p.is_file():
                return p
    return None


def find_idx_files(root: Union[str, os.PathLike], split: str = 'train'):
    """(images, labels) paths of a split in an IDX folder; FileNotFoundError naming what is missing."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"IDX split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    root = Path(root)
    prefix = _SPLIT_PREFIX[split]
    images = _find(root, f'{prefix}-images-idx3-ubyte')
    labels = _find(root, f'{prefix}-labels-idx1-ubyte')
    if images is None or labels is None:
        missing = [n for n, p in ((f'{prefix}-images-idx3-ubyte[.gz]', images),
                                  (f'{prefix}-labels-idx1-ubyte[.gz]', labels)) if p is None]
        raise FileNotFoundError(f'No {split} split in {root}: missing {", ".join(missing)}')
    return images, labels


def is_idx_dir(root: Union[str, os.PathLike]) -> bool:
    """True if the folder holds the images and labels of at least one IDX split."""
    for split in _SPLIT_PREFIX:
        try:
            find_idx_files(root, split)
            return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False


class IDXDataset(Dataset):
    """Images and labels of an IDX split (e.g. Fashion-MNIST) as (PIL image, int label) pairs.

    Images are grayscale PIL images (mode 'L'); open_clip's transforms convert them to RGB and resize them.
    """

    def __init__(
            self,
            root: Union[str, os.PathLike],
            split: str = 'train',
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            classes: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            root: Folder with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
                ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
            split: 'train' or 'test' (the ``t10k`` files).
            transform: Applied to each PIL image.
            target_transform: Applied to each label.
            classes: Optional class names, in label order (kept as ``self.classes``).
        """
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        image_path, label_path = find_idx_files(self.root, split)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f'{image_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}')
        if labels.ndim != 1:
            raise ValueError(f'{label_path}: expected labels [N], got shape {labels.shape}')
        if len(images) != len(labels):
            raise ValueError(f'{image_path} has {len(images)} images but {label_path} has {len(labels)} labels')
        if classes is not None and len(labels) and int(labels.max()) >= len(classes):
            raise ValueError(f'Labels go up to {int(labels.max())} but only {len(classes)} class names were given')
        self.images = images
        self.targets: List[int] = labels.astype(np.int64).tolist()
        self.classes = list(classes) if classes is not None else None
        _logger.info('IDX %s split of %s: %d images of %dx%d', split, self.root, len(images), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])  # uint8 [H, W] -> mode 'L'
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
