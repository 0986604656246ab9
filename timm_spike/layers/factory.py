"""timm's ``device=`` / ``dtype=`` model arguments for modules built by code that takes neither (spikingjelly's)."""
from contextlib import nullcontext
from typing import ContextManager, Optional, Union

import torch
from torch import nn

__all__ = ['device_scope', 'linear_like']

DeviceLike = Optional[Union[str, torch.device]]


def device_scope(device: DeviceLike) -> ContextManager:
    """Create every tensor inside the block on ``device`` (``device='meta'``: no memory allocated at all)."""
    return torch.device(device) if device is not None else nullcontext()


def linear_like(reference: nn.Module, in_features: int, out_features: int) -> nn.Module:
    """``nn.Linear(in_features, out_features)`` (identity for 0 outputs) on the device and in the dtype of
    ``reference``'s parameters, and in its training mode: a classifier reset on a moved or cast model matches it."""
    if out_features <= 0:
        return nn.Identity()
    p = next(reference.parameters(), None)
    dd = dict(device=p.device, dtype=p.dtype) if p is not None else {}
    head = nn.Linear(in_features, out_features, **dd)
    if not head.weight.is_meta:
        nn.init.trunc_normal_(head.weight, std=.02)
        nn.init.zeros_(head.bias)
    return head.train(reference.training)
