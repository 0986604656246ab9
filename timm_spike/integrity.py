"""Digests of weight files: every safetensors file the project writes records the sha256 of its tensors in its
metadata, and every load through the project (and through timm's and open_clip's file loaders once
``timm_spike`` / ``open_clip_spike`` are imported) checks it. Files without a digest (written elsewhere) load as
before.

The digest covers, for each tensor in name order, its name, its shape and its bytes as stored (little-endian,
row-major: what safetensors writes), so it is computed the same from the tensors before writing and from the
file's data section when reading, without loading the file into torch.
"""
import errno
import hashlib
import json
import mmap
import os
import struct
from typing import Callable, Dict, Mapping, Optional, Union

import torch

__all__ = ['DIGEST_KEY', 'WeightsDigestError', 'file_digest', 'save_safetensors', 'tensors_digest',
           'verify_safetensors', 'verifying_loader']

DIGEST_KEY = 'tensors_sha256'  # key of the safetensors metadata (a file's ``__metadata__``)
_MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit on the JSON header


class WeightsDigestError(ValueError):
    """A weight file whose tensors do not match the digest recorded when it was written."""


def _entry(h, name: str, shape) -> None:
    h.update(f'{name}\0{",".join(str(int(s)) for s in shape)}\0'.encode())


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of tensors as a safetensors file stores them; equal to `file_digest` of the written file."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        _entry(h, name, t.shape)
        if t.numel():
            h.update(t.to('cpu').contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _read_header(f, path: str):
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f'{path} is not a safetensors file (shorter than its header)')
    n = struct.unpack('<Q', raw)[0]
    if n > _MAX_HEADER:
        raise ValueError(f'{path} is not a safetensors file (header of {n} bytes)')
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not a safetensors file (its header is not JSON)') from e
    if not isinstance(header, dict):
        raise ValueError(f'{path} is not a safetensors file (its header is not a JSON object)')
    return header, 8 + n


def file_digest(path: Union[str, os.PathLike]):
    """``(recorded, computed)``: the digest in the file's metadata (None if it has none) and that of its tensors.

    The computed one is None when nothing is recorded (nothing is read past the header then).
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        header, start = _read_header(f, path)
        meta = header.get('__metadata__') or {}
        recorded = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
        if recorded is None:
            return None, None
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # size >= 8: the header was read
            for name in sorted(k for k in header if k != '__metadata__'):
                info = header[name]
                try:
                    begin, end = (start + int(o) for o in info['data_offsets'])
                    shape = info['shape']
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f'{path} is not a safetensors file (bad entry {name!r})') from e
                if end > size or begin > end:
                    raise ValueError(f'{path} is truncated: tensor {name!r} ends past the end of the file')
                _entry(h, name, shape)
                h.update(data[begin:end])
    return recorded, h.hexdigest()


def verify_safetensors(path: Union[str, os.PathLike]) -> Optional[bool]:
    """Check a safetensors file against the digest in its metadata.

    Returns:
        True when the digest matches, None when the file records none (written elsewhere: loaded unchecked).

    Raises:
        WeightsDigestError: the tensors differ from the recorded digest (one line naming the file).
    """
    recorded, computed = file_digest(path)
    if recorded is None:
        return None
    if recorded != computed:
        raise WeightsDigestError(
            f'{os.fspath(path)} is damaged: its tensors do not match the sha256 recorded when it was written '
            f'({recorded[:12]}... vs {computed[:12]}...); copy, download or export it again')
    return True


def _io_error(e: Exception, path: str) -> Exception:
    """safetensors reports write failures as SafetensorError text; turn a full disk / denied write into OSError."""
    text = str(e)
    for code, marks in ((errno.ENOSPC, ('os error 28', 'No space left')), (errno.EACCES, ('os error 13',)),
                        (errno.EROFS, ('os error 30', 'Read-only file system'))):
        if any(m in text for m in marks):
            return OSError(code, os.strerror(code), path)
    return e


def save_safetensors(tensors: Dict[str, torch.Tensor], path: Union[str, os.PathLike],
                     metadata: Optional[Mapping[str, str]] = None) -> str:
    """Write ``tensors`` as safetensors with their digest in the metadata, crash-safe (`atomic_path`).

    A full disk or a denied write raises ``OSError`` (ENOSPC / EACCES) naming ``path``.

    Returns:
        The digest written.
    """
    from safetensors.torch import save_file

    from .utils import atomic_path
    path = os.fspath(path)
    digest = tensors_digest(tensors)
    meta = {**(metadata or {}), DIGEST_KEY: digest}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=meta)
        except OSError:
            raise
        except Exception as e:
            err = _io_error(e, path)
            if err is e:
                raise
            raise err from e
    return digest


def verifying_loader(load: Callable) -> Callable:
    """Wrap a ``load_state_dict(path, ...)`` function of timm or open_clip: check a safetensors file first."""
    if getattr(load, '_checks_digest', False):
        return load

    def load_state_dict(checkpoint_path, *args, **kwargs):
        if str(checkpoint_path).endswith('.safetensors') and os.path.isfile(checkpoint_path):
            verify_safetensors(checkpoint_path)
        return load(checkpoint_path, *args, **kwargs)

    load_state_dict._checks_digest = True
    load_state_dict.__wrapped__ = load
    load_state_dict.__doc__ = load.__doc__
    return load_state_dict


def install_timm_check() -> None:
    """Make timm's file loaders (``pretrained_cfg_overlay=dict(file=...)``, ``local-dir:``) check digests."""
    try:
        from timm.models import _builder, _hub
    except ImportError:  # pragma: no cover - timm without these modules: nothing to wrap
        return
    for module in (_builder, _hub):
        if hasattr(module, 'load_state_dict'):
            module.load_state_dict = verifying_loader(module.load_state_dict)
