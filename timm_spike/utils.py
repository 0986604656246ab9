"""Small utilities shared by timm_spike and open_clip_spike: crash-safe file writes, shape-only model builds."""
import os
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

__all__ = ['atomic_path', 'atomic_write', 'build_on_meta']


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder (same suffix) to write; rename it over ``path`` on success.

    Readers see the old file or the whole new one, never a half-written one; on an error the temporary file is
    removed and ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, data: bytes):
    """Write bytes to ``path`` through a temporary file in the same folder, then rename over it."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the meta device, or on the CPU if the model's __init__ needs values.

    Dense MAC counts need shapes only, so a large teacher costs no memory or time on the meta device.
    """
    try:
        with torch.device('meta'):
            return build()
    except Exception:  # a model whose __init__ reads values; build it for real
        return build()
