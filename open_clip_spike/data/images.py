"""Reading an image file with an error that names it: a truncated or corrupt file, or one larger than PIL's
decompression-bomb limit, is one line with the path and the fix instead of PIL's message without a file name."""
import os
from typing import Union

from PIL import Image

__all__ = ['ImageFileError', 'load_image']


class ImageFileError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, not an image, or too large for PIL)."""


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open and decode an image as RGB (torchvision's ``ImageFolder`` loader, with the file named on failure).

    Raises:
        ImageFileError: the file cannot be decoded, or has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``
            allows (PIL's guard against decompression bombs; raise that limit if you trust the file).
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return img.convert('RGB')  # decodes the whole file here, where the error can name it
    except Image.DecompressionBombError as e:
        pixels = str(e).split('(')[1].split(' ')[0] if '(' in str(e) else 'too many'
        raise ImageFileError(
            f'{path}: image of {pixels} pixels exceeds PIL\'s limit (PIL.Image.MAX_IMAGE_PIXELS = '
            f'{Image.MAX_IMAGE_PIXELS}, refused at twice that) against decompression bombs: shrink it, or raise '
            f'PIL.Image.MAX_IMAGE_PIXELS if you trust the file') from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError, 'image file is truncated', ...
        if isinstance(e, OSError) and not os.path.isfile(path):
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImageFileError(f'{path} cannot be read as an image ({detail}): replace or remove the file') from e
