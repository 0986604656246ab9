"""Checkpoint files: reading a state dict without unpickling code, exporting open_clip_train's ``.pt`` as
safetensors, and the state dict a safetensors file can hold.

The module prefix of DistributedDataParallel runs is removed with timm's ``clean_state_dict``; ``.pt`` files are
read with PyTorch's restricted ``weights_only`` loader (tensors and plain containers only).
"""
import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
from timm.models import clean_state_dict

from timm_spike.utils import save_safetensors, verify_safetensors

__all__ = ['CheckpointError', 'check_checkpoint_file', 'export_checkpoint', 'load_checkpoint_file',
           'state_dict_for_safetensors']


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a state dict of tensors."""


def _state_dict_of(ckpt, path) -> Dict[str, torch.Tensor]:
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f'{path} does not hold a state dict (a mapping of names to tensors)')
    return clean_state_dict(ckpt)  # strips DistributedDataParallel's 'module.' prefix


def _first_line(e: BaseException) -> str:
    """The first sentence of an error message (torch's run on for paragraphs)."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.split(r'\.\s', line, maxsplit=1)[0].rstrip('.')[:200]


def _read_error(path: Path, e: BaseException) -> CheckpointError:
    """One line naming the file, what is wrong with it and what to do."""
    text = str(e)
    if 'Unsupported global' in text or 'WeightsUnpickler' in text or 'weights_only' in text.lower():
        found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
        what = f' (e.g. {found.group(1)})' if found else ''
        return CheckpointError(
            f'Could not read checkpoint {path}: it holds pickled Python objects besides tensors{what}, which could run '
            f'code when loaded, so it is refused; export its weights as safetensors where it was made, or load it yourself with '
            f'torch.load(weights_only=False) if you trust it')
    return CheckpointError(f'Could not read checkpoint {path}: {_first_line(e)}; it may be truncated (an interrupted '
                           f'write, copy or download): copy or export it again')


def check_checkpoint_file(path: Union[str, Path, None]) -> None:
    """Raise a one-line ``FileNotFoundError`` / `CheckpointError` for a local checkpoint file that cannot be read.

    Called by the commands before they build a model. Values that are no file path (``None``, open_clip tags such
    as ``openai``) pass: open_clip resolves those.
    """
    if path is None:
        return
    p = Path(path)
    looks_like_file = os.sep in str(path) or p.suffix in ('.pt', '.pth', '.bin', '.safetensors', '.ckpt')
    if not looks_like_file:
        return
    if not p.is_file():
        raise FileNotFoundError(f'Checkpoint not found: {p}')
    if p.suffix == '.safetensors':
        from safetensors import safe_open
        try:
            with safe_open(str(p), framework='pt') as f:
                for k in f.keys():
                    f.get_slice(k)
        except Exception as e:
            raise _read_error(p, e) from e
        verify_safetensors(p)  # bit flips: the digest recorded when the project wrote it
        return
    try:
        ckpt = torch.load(str(p), map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:
        raise _read_error(p, e) from e
    _state_dict_of(ckpt, p)


def load_checkpoint_file(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """State dict of a local checkpoint: safetensors, or an open_clip_train ``.pt`` (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            state_dict = load_file(str(path))
        except Exception as e:  # truncated or not a safetensors file
            raise _read_error(path, e) from e
        verify_safetensors(path)  # bit flips: the digest recorded when the project wrote it
        return state_dict
    try:
        ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
        raise _read_error(path, e) from e
    return _state_dict_of(ckpt, path)


def model_from_checkpoint(model_name: str, path: Union[str, Path]) -> nn.Module:
    """``open_clip.create_model(model_name)`` with the weights of a local checkpoint file (strict)."""
    import open_clip
    state_dict = load_checkpoint_file(path)
    model = open_clip.create_model(model_name)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f'Checkpoint {path} does not fit {model_name}: {e}') from e
    return model


def state_dict_for_safetensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); contiguous copies store each key as loaded.
    return {k: v.detach().to('cpu').contiguous().clone() for k, v in module.state_dict().items()}


def export_checkpoint(checkpoint: str, output: Optional[str] = None) -> str:
    """Write the model weights of an open_clip_train checkpoint (``epoch_N.pt``) as safetensors.

    The result loads with ``open_clip.create_model_and_transforms(name, pretrained=<file>)``. The output is
    written to a temporary file and renamed, so a failed export leaves nothing half-written; its metadata holds
    the sha256 of its tensors, checked whenever the project loads it.

    Args:
        checkpoint: Path of the ``.pt`` file written by open_clip_train.
        output: Where to write; default: the same path with ``.safetensors``.

    Returns:
        The path written.
    """
    output = output or os.path.splitext(checkpoint)[0] + '.safetensors'
    try:
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'Could not read checkpoint {checkpoint} with torch.load(weights_only=True): {e}') from e
    # clone: safetensors refuses tensors that share storage (tied weights)
    sd = {k: v.detach().clone().contiguous() for k, v in _state_dict_of(ckpt, checkpoint).items()}
    meta = {'format': 'pt', 'source': os.path.basename(checkpoint)}
    if isinstance(ckpt, dict) and 'epoch' in ckpt:
        meta['epoch'] = str(ckpt['epoch'])
    save_safetensors(sd, output, metadata=meta)  # crash-safe, with the tensors' sha256 in the metadata
    return output
