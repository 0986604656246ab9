"""Per-layer MACs and SOPs of the operations that actually run, on spikingjelly's op_counter.

spikingjelly's ``DispatchCounterMode`` intercepts every aten op and tracks the module running it; its
``MACCounter`` counts dense MACs of real-valued inputs and ``SynOpCounter`` counts exact spike-driven weight
uses. What it lacks, and this module adds as one more ``BaseCounter``:

- the field's SOP convention, SOPs = firing rate of the input spikes x dense MACs (Spikformer /
  Spikingformer), with ``min(fr_a, fr_b)`` when both operands are spikes (Spikingformer's k^T v term);
- one record per op under the innermost module that ran it (spikingjelly adds it to every ancestor);
- weights told apart from activations by storage, so an all-zero weight is never mistaken for spikes;
- the dense count of every op whatever its input (the ANN-of-equal-shape figure).

Whether an input is spikes is measured (all values in {0, 1}, ``is_binary_tensor``), never read from names.
"""
import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.op_counter import BaseCounter, DispatchCounterMode, is_binary_tensor

__all__ = ['LayerOps', 'SpikeOpCounter', 'count_operations', 'ann_equivalent', 'calibrate_bn']

_logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _mm(args, kwargs, out):
    x, y = args[:2]
    return x.shape[0] * x.shape[1] * y.shape[1], (x, y)


def _addmm(args, kwargs, out):
    return _mm(args[1:], kwargs, out)


def _bmm(args, kwargs, out):
    x, y = args[:2]
    return x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2], (x, y)


def _baddbmm(args, kwargs, out):
    return _bmm(args[1:], kwargs, out)


def _convolution(args, kwargs, out):
    x, w, transposed = args[0], args[1], args[6]
    spatial = x.shape[2:] if transposed else out.shape[2:]
    # w: [C_out, C_in / groups, *kernel]: each output position of each output channel sums C_in/groups x kernel
    return x.shape[0] * w.shape[0] * prod(w.shape[1:]) * prod(spatial), (x, w)


def _sdpa(args, kwargs, out):
    # q k^T and attn v of a softmax attention: real-valued after the softmax, so always MACs.
    q, k, v = args[:3]
    b, h, s_q, d_q = q.shape
    return b * h * s_q * k.shape[-2] * (d_q + v.shape[-1]), ()


def _native_mha(args, kwargs, out):
    # nn.MultiheadAttention's inference fast path (batch-first): q/k/v projections, q k^T, attn v, out projection.
    q, k, embed_dim = args[0], args[1], args[3]
    nq, nk = q.numel() // embed_dim, k.numel() // embed_dim
    b, lq, lk = q.shape[0], q.shape[-2], k.shape[-2]
    return embed_dim * embed_dim * (2 * nq + 2 * nk) + 2 * b * lq * lk * embed_dim, ()


_RULES: Dict[Any, Callable] = {
    aten.mm.default: _mm,
    aten.addmm.default: _addmm,
    aten.bmm.default: _bmm,
    aten.baddbmm.default: _baddbmm,
    aten.convolution.default: _convolution,
}
if hasattr(aten, '_native_multi_head_attention'):
    _RULES[aten._native_multi_head_attention.default] = _native_mha
for _name in ('_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_flash_attention',
              '_scaled_dot_product_efficient_attention', '_scaled_dot_product_cudnn_attention'):
    if hasattr(aten, _name):
        _RULES[getattr(aten, _name).default] = _sdpa


@dataclass
class LayerOps:
    """Operations of one module (its own ops, not its children's), summed over every call.

    Products of two spike tensors keep their spike counts apart so the lower rate is taken over all the
    data at the end (Spikingformer applies min(fr_k, fr_v) to dataset-level rates); taking it per batch
    would make the figure depend on how the data is batched.
    """
    ops: Set[str] = field(default_factory=set)
    dense_macs: float = 0.
    macs: float = 0.
    single_sops: float = 0.
    pairs: Dict[str, List[float]] = field(default_factory=dict)  # op -> [dense, nnz_a, numel_a, nnz_b, numel_b]
    real_calls: int = 0
    spike_calls: int = 0

    @property
    def sops(self) -> float:
        return self.single_sops + sum(d * min(na / ma, nb / mb) for d, na, ma, nb, mb in self.pairs.values())

    @property
    def input(self) -> str:
        if self.spike_calls and self.real_calls:
            return 'mixed'
        return 'spikes' if self.spike_calls else 'real'


class SpikeOpCounter(BaseCounter):
    """Counts, per innermost module, dense MACs, MACs on real inputs and SOPs on spike inputs.

    Use inside spikingjelly's ``DispatchCounterMode``. ``layers`` maps module names (without the root
    class name) to ``LayerOps``; ops run outside any submodule are filed under ``'(root)'``.

    Args:
        model: The model whose parameters and buffers are weights (never spikes).
        measure_spikes: False counts every op as dense MACs without looking at values (meta tensors work).
    """

    def __init__(self, model: nn.Module, measure_spikes: bool = True):
        super().__init__()
        self.rules = dict(_RULES)
        self.measure_spikes = measure_spikes
        self._weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())
                         if not t.is_meta}
        self.layers: Dict[str, LayerOps] = defaultdict(LayerOps)

    def _is_weight(self, t: torch.Tensor) -> bool:
        return not t.is_meta and t.untyped_storage().data_ptr() in self._weights

    def count(self, func, args, kwargs, out, active_modules=None, parent_names=None) -> int:
        dense, operands = self.rules[func](args, kwargs, out)
        spikes = []  # (nonzeros, numel) of each operand that is a spike tensor
        if self.measure_spikes:
            for t in operands:
                if torch.is_tensor(t) and t.numel() and not t.is_meta and not self._is_weight(t) \
                        and is_binary_tensor(t):
                    spikes.append((t.count_nonzero().item(), t.numel()))
        rec = self.layers[_innermost(parent_names)]
        op = func.__name__.split('.')[0]
        rec.ops.add(op)
        rec.dense_macs += dense
        if len(spikes) == 1:  # spikes x weights (or x a real matrix): SOPs = rate x dense MACs
            rec.single_sops += dense * spikes[0][0] / spikes[0][1]
            rec.spike_calls += 1
        elif spikes:  # spikes x spikes: the lower rate (Spikingformer's k^T v term), taken over all the data
            acc = rec.pairs.setdefault(op, [0., 0., 0., 0., 0.])
            for i, v in enumerate((dense, *spikes[0], *spikes[1])):
                acc[i] += v
            rec.spike_calls += 1
        else:
            rec.macs += dense
            rec.real_calls += 1
        return dense

    def record(self, scope: str, func: Any, value: int):
        if scope == 'Global':  # per-layer records live in self.layers; keep only spikingjelly's global total
            super().record(scope, func, value)

    def reset(self):
        super().reset()
        self.layers = defaultdict(LayerOps)


def _innermost(parent_names: Optional[Iterable[str]]) -> str:
    names = [n for n in (parent_names or ()) if n != 'Global']
    if not names:
        return '(root)'
    leaf = max(names, key=lambda n: n.count('.'))
    return leaf.split('.', 1)[1] if '.' in leaf else '(root)'


def count_operations(
        model: nn.Module,
        batches: Iterable[Any],
        forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
        measure_spikes: bool = True,
) -> Tuple[Dict[str, LayerOps], int]:
    """Run ``forward_fn(model, batch)`` on every batch under the counter.

    Returns:
        The per-module ``LayerOps`` (summed over all batches) and the number of samples seen (the size of
        the first dimension of each batch's input).
    """
    forward_fn = forward_fn or (lambda m, b: m(b))
    counter = SpikeOpCounter(model, measure_spikes=measure_spikes)
    n = 0
    # Neurons keep the implementation in force (timm_spike.layers.lif_impl): the fused LIF runs eagerly under a
    # dispatch mode (torch.compile cannot run there) with the same spikes.
    with torch.no_grad(), DispatchCounterMode([counter]):
        for batch in batches:
            forward_fn(model, batch)
            n += len(batch)
    return dict(counter.layers), n


def ann_equivalent(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as the ANN of equal shape: every spiking neuron replaced by the identity (its real
    input passes through) and one time step (every ``T`` attribute set to 1; learned readouts over time
    become the mean, which over one step is the identity)."""
    ann = copy.deepcopy(model)
    for name, module in list(ann.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, neuron.BaseNode):
                setattr(module, child_name, nn.Identity())
    for module in ann.modules():
        # instance attributes only: a read-only ``T`` property (SpikeCLIP's, derived from its towers) follows them
        if isinstance(vars(module).get('T'), int) and not isinstance(module.T, bool):
            module.T = 1
        if getattr(module, 'mode', None) == 'weighted' and hasattr(module, 'logits'):
            module.mode = 'mean'
    return ann


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[Any], forward_fn: Optional[Callable] = None) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (a cumulative average).

    A randomly initialised model has identity BN statistics and is nearly silent in eval mode, which would
    make any energy figure meaningless; calibrating on the data gives it realistic firing rates without
    training. Returns the number of BN layers calibrated. The model is left in eval mode.
    """
    forward_fn = forward_fn or (lambda m, b: m(b))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for batch in batches:
            forward_fn(model, batch)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
        model.eval()
    return len(bns)
