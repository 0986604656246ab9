"""Inference forms of the layers that take spikes: LIF -> [max-pool] -> conv / linear, with BatchNorm folded.

A model's training modules (a LIF, a convolution, a BatchNorm, each its own module, as the papers draw them) are
turned into these by ``timm.utils.reparameterize_model`` through the models' ``fuse()`` methods. In this form
the neuron and the layer it feeds are one module, so the layer knows its input is binary by construction (its
own neuron made it) and can compute from the spikes that fired (``spike_kernels``); the kernel is picked at every
call by the process-wide switch ``timm_spike.layers.set_spike_kernel``. The dense path of the same module (the
'dense' switch, autograd, another device or dtype, or a rate above the break-even under 'auto') runs the neuron
and ``F.conv2d`` / ``F.linear`` with the folded weights. The event-driven path computes no gradients, so it runs
where autograd records nothing: under ``torch.no_grad()`` / ``torch.inference_mode()``, as inference runs.

Tensors stay channels last between these layers ([T, B, H, W, C] in memory), the layout both kernels read and
write; the modules take and return the model's time-major shapes ([T, B, C, H, W] views of that memory).
"""
import logging
import threading
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import get_spike_kernel
from .fused_lif import FusedLIFParams, fused_params_from_node
from .spike_kernels import last_mlp_spikes, last_spikes, lif_conv3x3, lif_linear, lif_mlp, sparse_allowed

__all__ = ['fold_bn', 'FoldedConv2d', 'SpikingConv2d', 'SpikingLinear', 'spiking_mlp', 'inference_form',
           'is_inference_form', 'spike_counts']

_logger = logging.getLogger(__name__)
_recorder = threading.local()


def _record(layer: nn.Module, spikes: Union[int, float, Callable[[], torch.Tensor]]) -> None:
    fn = getattr(_recorder, 'fn', None)
    if fn is not None:
        fn(layer, float(spikes() if callable(spikes) else spikes))


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: Optional[nn.Module]
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution or linear layer followed by an eval-mode BatchNorm, as one layer."""
    out_chs = weight.shape[0]
    bias = torch.zeros(out_chs, dtype=weight.dtype, device=weight.device) if bias is None else bias
    if bn is None:
        return weight.detach().clone(), bias.detach().clone()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return weight * scale.reshape(shape), (bias - bn.running_mean) * scale + bn.bias


def _max_pool_seq(x: torch.Tensor) -> torch.Tensor:
    # [T, B, C, H, W] -> the 3x3 / stride 2 / padding 1 max-pool of every map
    return F.max_pool2d(x.flatten(0, 1), kernel_size=3, stride=2, padding=1).unflatten(0, x.shape[:2])


class FoldedConv2d(nn.Module):
    """A convolution and its eval-mode BatchNorm as one convolution on a real-valued [T, B, C, H, W] sequence
    (a model's first layer, fed by the image itself); the output is channels last in memory."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, padding: int):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.flatten(0, 1).contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                     padding=self.padding)
        return y.unflatten(0, x.shape[:2])


class _SpikeInput(nn.Module):
    """The neuron of a spike-input layer and its cached kernel-layout weight."""

    def __init__(self, lif: nn.Module):
        super().__init__()
        self.lif = lif
        self._cache_key = None
        self._cache = None

    def _lif_params(self) -> Optional[FusedLIFParams]:
        return fused_params_from_node(self.lif) if not getattr(self.lif, 'store_v_seq', False) else None

    def _kernel_weight(self, make) -> torch.Tensor:
        w = self.weight
        # an inference tensor (a model built under torch.inference_mode) keeps no version counter
        key = (w.data_ptr(), -1 if w.is_inference() else w._version, w.dtype, w.device)
        if key != self._cache_key:
            with torch.no_grad():
                self._cache = make(w).contiguous()
            self._cache_key = key
        return self._cache

    def _sparse_allowed(self, x: torch.Tensor) -> bool:
        # the sparse path computes no gradients: only where autograd would not record the call
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or self.bias.requires_grad):
            return False
        return sparse_allowed(x)

    def _spikes(self, x: torch.Tensor, T: int) -> torch.Tensor:
        if x.shape[0] == 1 and T > 1:
            x = x.expand(T, *x.shape[1:])
        return self.lif(x)


POOLS = (None, 'spike', 'real')


class SpikingConv2d(_SpikeInput):
    """LIF -> conv 3x3 (stride 1, padding 1) with the BatchNorm folded in, and optionally a 3x3 / stride 2 max-pool
    of the spikes (``pool='spike'``: LIF -> pool -> conv) or of the current (``'real'``: pool -> LIF -> conv).

    forward(x [T', B, C, H, W], T) -> [T, B, N, H', W'] (channels-last memory). T' = 1 is a direct-encoded input:
    the same current at every one of the T steps (an expanded [T, ...] view costs nothing either).
    """

    def __init__(self, lif: nn.Module, weight: torch.Tensor, bias: torch.Tensor, pool: Optional[str] = None):
        super().__init__(lif)
        if weight.shape[-2:] != (3, 3):
            raise ValueError(f'SpikingConv2d takes a 3x3 convolution, got kernel {tuple(weight.shape[-2:])}')
        if pool not in POOLS:
            raise ValueError(f'Unknown pool {pool!r}; choose one of {POOLS}')
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.pool = pool

    def forward(self, x: torch.Tensor, T: Optional[int] = None) -> torch.Tensor:
        T = x.shape[0] if T is None else T
        if self.pool == 'real':
            x = _max_pool_seq(x)
        params = self._lif_params()
        counted = False
        if params is not None and self._sparse_allowed(x):
            w9 = self._kernel_weight(lambda w: w.permute(2, 3, 1, 0).reshape(9, w.shape[1], w.shape[0]))
            out = lif_conv3x3(x.permute(0, 1, 3, 4, 2), T, params, w9, self.bias.detach(), self.pool == 'spike')
            _record(self, last_spikes())
            if out is not None:
                return out.permute(0, 1, 4, 2, 3)
            counted = True  # above the break-even: dense below, the spikes already counted
        s = self._spikes(x, T)
        if not counted:
            _record(self, lambda: s.sum())
        if self.pool == 'spike':
            s = _max_pool_seq(s)
        out = F.conv2d(s.flatten(0, 1).contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                       padding=1)
        return out.unflatten(0, s.shape[:2])

    def extra_repr(self) -> str:
        return f'{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size=3, pool={self.pool}'


class SpikingLinear(_SpikeInput):
    """LIF -> linear over the last dimension (a 1x1 convolution in token layout), BatchNorm folded in.

    forward(x [T', ..., K], T) -> [T, ..., N]; T' = 1 is a direct-encoded input.
    """

    def __init__(self, lif: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__(lif)
        self.weight = nn.Parameter(weight.detach().reshape(weight.shape[0], -1).clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor, T: Optional[int] = None) -> torch.Tensor:
        T = x.shape[0] if T is None else T
        params = self._lif_params()
        counted = False
        if params is not None and self._sparse_allowed(x):
            out = lif_linear(x, T, params, self._kernel_weight(lambda w: w.t()), self.bias.detach())
            _record(self, last_spikes())
            if out is not None:
                return out
            counted = True
        s = self._spikes(x, T)
        if not counted:
            _record(self, lambda: s.sum())
        return F.linear(s, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}'


def spiking_mlp(fc1: SpikingLinear, fc2: SpikingLinear, x: torch.Tensor, T: Optional[int] = None) -> torch.Tensor:
    """``fc2(fc1(x, T))`` for two spike-input layers in a row (a spiking MLP): on the event-driven path one native
    pass per position (``spike_kernels.lif_mlp``: the hidden layer stays in the cache), bit for bit what the two
    layers give one after the other; otherwise the two layers, each deciding its own kernel."""
    T = x.shape[0] if T is None else T
    p1, p2 = fc1._lif_params(), fc2._lif_params()
    if p1 is not None and p2 is not None and fc1._sparse_allowed(x) and fc2._sparse_allowed(x):
        out = lif_mlp(x, T, p1, fc1._kernel_weight(lambda w: w.t()), fc1.bias.detach(), p2,
                      fc2._kernel_weight(lambda w: w.t()), fc2.bias.detach())
        if out is not None:
            n1, n2 = last_mlp_spikes()
            _record(fc1, n1)
            _record(fc2, n2)
            return out
    return fc2(fc1(x, T), T)


@contextmanager
def spike_counts(model: nn.Module) -> Iterator[Dict[str, float]]:
    """Count, within the block, the spikes that the neuron of each spike-input layer of ``model`` (in inference
    form) makes, by layer name, whichever kernel runs: the same figure dense and event-driven (a neuron whose
    potential lands on its threshold aside), for comparing the two paths.

    Example::

        with spike_counts(fused) as counts:
            fused(images)
        counts  # {'patch_embed.stages.1': 40864358.0, ...}
    """
    names = {m: n for n, m in model.named_modules() if isinstance(m, (SpikingConv2d, SpikingLinear))}
    counts = {n: 0.0 for n in names.values()}

    def record(layer: nn.Module, spikes: float):
        name = names.get(layer)
        if name is not None:
            counts[name] += spikes

    previous = getattr(_recorder, 'fn', None)
    _recorder.fn = record
    try:
        yield counts
    finally:
        _recorder.fn = previous


def is_inference_form(model: nn.Module) -> bool:
    """Whether ``model`` holds event-driven spike-input layers (it went through ``reparameterize_model``)."""
    return any(isinstance(m, (SpikingConv2d, SpikingLinear)) for m in model.modules())


def inference_form(model: nn.Module, device: Union[str, torch.device, None] = None) -> nn.Module:
    """The model as the ``spikeclip`` commands run inference: on the CPU, unless the spike kernel is 'dense', a copy
    in its inference form (``timm.utils.reparameterize_model``: BatchNorm folded, spike-input layers event-driven),
    in eval mode; anywhere else the model itself. Its weights are unchanged; its outputs equal the model's up to
    float32 rounding (a neuron whose potential lands on the threshold may flip).
    """
    from timm.utils import reparameterize_model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type != 'cpu' or get_spike_kernel() == 'dense' or is_inference_form(model):
        return model
    fused = reparameterize_model(model.eval())  # a copy; fuse() on every child that has it
    if callable(getattr(fused, 'fuse', None)):  # a tower whose own class has an inference form (a text tower)
        fused = fused.fuse()
    if is_inference_form(fused):
        _logger.info('Inference runs event-driven on the CPU (spike kernel %r; set_spike_kernel or $TIMM_SPIKE_KERNEL '
                     "'dense' to run every layer dense)", get_spike_kernel())
    return fused.eval()
