"""Activation checkpointing that leaves BatchNorm's running statistics as a plain step leaves them.

``torch.utils.checkpoint`` recomputes a block's forward during backward. In training mode every BatchNorm inside
the block then updates its running mean/var (and ``num_batches_tracked``) a second time, so a model trained with
checkpointing ends up with other inference statistics than the same model trained without it: the momentum is
applied twice per step. Neither PyTorch nor timm guards against this (their checkpoint helpers assume
normalisation layers without running state, as in ViTs), and spiking backbones are full of BatchNorm. The
non-reentrant checkpoint takes a ``context_fn`` for exactly this kind of job: the recompute runs inside a context
that restores the running statistics afterwards, so only the first (real) forward counts.
"""
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ['checkpoint_module', 'preserve_bn_running_stats']

_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


@contextmanager
def preserve_bn_running_stats(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of every BatchNorm in ``module`` when the context exits."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for name in _BN_BUFFERS:
                buf = getattr(m, name, None)
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def checkpoint_module(module: nn.Module, *args):
    """``torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)`` whose recompute does not touch
    BatchNorm's running statistics (see the module docstring). Gradients and outputs are those of the plain call."""
    return checkpoint(module, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), preserve_bn_running_stats(module)))
