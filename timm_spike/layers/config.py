"""Run-time switches of timm_spike layers (the counterpart of ``timm.layers.config``).

The LIF implementation is a property of the process, like timm's fused attention (``set_fused_attn``), never of a
model: it is not a model argument, not in a pretrained/Hub config and not in a checkpoint. Every implementation
computes the same spikes and gradients; only speed differs.

- ``'spikingjelly'``: spikingjelly's ``LIFNode`` (its CUDA/Triton kernels on GPU, a loop of small ops on CPU).
- ``'fused'``: ``timm_spike.layers.fused_lif``, one compiled pass over the time loop (eager when compiling fails).
- ``'auto'`` (default): ``'fused'`` on the CPU, ``'spikingjelly'`` on any other device, where spikingjelly's own
  kernels are the fast path. Decided per call from the input's device.

The default comes from the environment variable ``TIMM_SPIKE_LIF_IMPL`` at import (e.g. for training subprocesses,
which no Python call reaches); ``set_lif_impl`` and the ``lif_impl`` context manager change it at run time.
"""
import os
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ['LIF_IMPLS', 'LIF_IMPL_ENV', 'set_lif_impl', 'get_lif_impl', 'lif_impl', 'use_fused_lif',
           'SPIKE_KERNELS', 'SPIKE_KERNEL_ENV', 'set_spike_kernel', 'get_spike_kernel', 'spike_kernel']

LIF_IMPLS = ('auto', 'fused', 'spikingjelly')
LIF_IMPL_ENV = 'TIMM_SPIKE_LIF_IMPL'


def _check_impl(impl: str, source: str = 'LIF impl') -> str:
    if impl not in LIF_IMPLS:
        raise ValueError(f'Unknown {source} {impl!r}; choose one of {LIF_IMPLS}')
    return impl


_LIF_IMPL = _check_impl(os.environ.get(LIF_IMPL_ENV, 'auto'), f'LIF implementation in ${LIF_IMPL_ENV}:')


def set_lif_impl(impl: str) -> None:
    """Set the LIF implementation of every timm_spike neuron in this process.

    Args:
        impl: 'auto', 'fused' or 'spikingjelly' (see the module docstring).
    """
    global _LIF_IMPL
    if isinstance(impl, torch.nn.Module):
        raise TypeError('set_lif_impl(impl) is a process-wide switch and takes no model: call set_lif_impl(impl), '
                        'or use the context manager timm_spike.layers.lif_impl(impl)')
    _LIF_IMPL = _check_impl(impl)


def get_lif_impl() -> str:
    """The LIF implementation in force: 'auto', 'fused' or 'spikingjelly'."""
    return _LIF_IMPL


@contextmanager
def lif_impl(impl: str) -> Iterator[None]:
    """Run a block with another LIF implementation and restore the previous one on exit.

    Example::

        with lif_impl('spikingjelly'):
            out = model(x)
    """
    previous = get_lif_impl()
    set_lif_impl(impl)
    try:
        yield
    finally:
        set_lif_impl(previous)


def use_fused_lif(device: torch.device) -> bool:
    """Whether the switch in force picks the fused LIF for a tensor on ``device``."""
    impl = _LIF_IMPL
    if impl == 'auto':
        return device.type == 'cpu'
    return impl == 'fused'


# The kernel of layers that take spikes, in their inference form (``timm.utils.reparameterize_model``):
# - 'auto' (default): event-driven on the CPU in float32 without autograd when the call's spike rate is below the
#   layer's break-even (``timm_spike.layers.spike_kernels.SPARSE_MAX_RATE``), dense otherwise;
# - 'sparse': event-driven whenever the device, dtype and autograd allow it, whatever the rate;
# - 'dense': always dense (the training path's arithmetic).
# Like the LIF implementation, a property of the process, never of a model or its config.
SPIKE_KERNELS = ('auto', 'sparse', 'dense')
SPIKE_KERNEL_ENV = 'TIMM_SPIKE_KERNEL'


def _check_kernel(kernel: str, source: str = 'spike kernel') -> str:
    if kernel not in SPIKE_KERNELS:
        raise ValueError(f'Unknown {source} {kernel!r}; choose one of {SPIKE_KERNELS}')
    return kernel


_SPIKE_KERNEL = _check_kernel(os.environ.get(SPIKE_KERNEL_ENV, 'auto'), f'spike kernel in ${SPIKE_KERNEL_ENV}:')


def set_spike_kernel(kernel: str) -> None:
    """Set the kernel of every spike-input layer in inference form in this process.

    Args:
        kernel: 'auto', 'sparse' or 'dense' (see ``SPIKE_KERNELS`` above).
    """
    global _SPIKE_KERNEL
    _SPIKE_KERNEL = _check_kernel(kernel)


def get_spike_kernel() -> str:
    """The spike kernel in force: 'auto', 'sparse' or 'dense'."""
    return _SPIKE_KERNEL


@contextmanager
def spike_kernel(kernel: str) -> Iterator[None]:
    """Run a block with another spike kernel and restore the previous one on exit."""
    previous = get_spike_kernel()
    set_spike_kernel(kernel)
    try:
        yield
    finally:
        set_spike_kernel(previous)
