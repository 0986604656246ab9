"""Real images to measure firing rates on: an ImageFolder directory, or small bundled sets for demos."""
import os
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ['SKIMAGE_PHOTOS', 'PILImageDataset', 'bundled_images', 'image_dataset']

# RGB photos bundled with scikit-image (no download): a cosmonaut, a cat, coffee, a rocket, ...
SKIMAGE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
                  'retina', 'colorwheel')


class PILImageDataset(Dataset):
    """A list of PIL images (label = index) with a transform."""

    def __init__(self, images: List, transform: Optional[Callable] = None):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), i


def bundled_images(name: str) -> Tuple[List, str]:
    """PIL images of a bundled set and a description: 'skimage' (8 photos) or 'digits' (sklearn, 1,797 8x8)."""
    from PIL import Image
    if name == 'skimage':
        try:
            import skimage.data
        except ImportError as e:
            raise ImportError("the image set 'skimage' needs scikit-image (pip install scikit-image); or use an "
                              "ImageFolder directory") from e
        return ([Image.fromarray(getattr(skimage.data, n)()).convert('RGB') for n in SKIMAGE_PHOTOS],
                f'scikit-image photos ({", ".join(SKIMAGE_PHOTOS)})')
    if name == 'digits':
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("the image set 'digits' needs scikit-learn (pip install scikit-learn)") from e
        imgs = load_digits().images  # 0..16 grey levels
        return ([Image.fromarray((im * (255 / 16)).astype('uint8')).convert('RGB') for im in imgs],
                'scikit-learn digits (1,797 8x8 handwritten digits)')
    raise ValueError(f'Unknown bundled image set {name!r}; choose skimage or digits, or give a directory')


def image_dataset(spec: str, transform: Optional[Callable] = None) -> Tuple[Dataset, str]:
    """A dataset from ``spec``: 'skimage', 'digits', or an ImageFolder directory (one sub-folder per class).

    Returns the dataset and a description for the report. Raises ValueError for a missing or empty folder.
    """
    if spec in ('skimage', 'digits'):
        images, desc = bundled_images(spec)
        return PILImageDataset(images, transform), desc
    if not os.path.isdir(spec):
        raise ValueError(f'Image data {spec!r} is not a directory (nor one of: skimage, digits)')
    from torchvision.datasets import ImageFolder
    try:
        ds = ImageFolder(spec, transform=transform)
    except FileNotFoundError as e:
        raise ValueError(f'Empty dataset: no images found in {spec!r} (an ImageFolder needs one sub-folder '
                         f'per class holding image files): {e}') from e
    return ds, f'ImageFolder {os.path.abspath(spec)}'
