"""Spiking neurons for timm_spike models, built on spikingjelly 2.x.

One place holds the LIF defaults of the papers (Spikingformer / SpikeCLIP): tau 2.0, threshold 1.0,
hard reset to 0, detached reset, input decay, and the Sigmoid(alpha=4) surrogate of the SpikeCLIP code.
"""
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional, Union

import torch
from spikingjelly.activation_based import neuron, surrogate

from .fused_lif import fused_params_from_node, lif_multi_step_fused

__all__ = ['LIFConfig', 'StatelessLIFNode', 'create_lif', 'create_surrogate', 'is_spiking_neuron', 'set_lif_impl',
           'SURROGATES', 'LIF_IMPLS']

_logger = logging.getLogger(__name__)

# Surrogate gradients by name, with the sharpness each is used with in the literature.
SURROGATES = {
    'sigmoid': (surrogate.Sigmoid, 4.0),
    'atan': (surrogate.ATan, 2.0),
    'erf': (surrogate.Erf, 2.0),
}

# Neuron implementations. 'spikingjelly': its LIFNode (CUDA/Triton kernels on GPU, a Python loop of small ops
# on CPU). 'fused': timm_spike.layers.fused_lif (one compiled pass over the time loop; about 8x faster than
# the CPU loop, same spikes and gradients). 'auto': fused on CPU, spikingjelly on CUDA, where spikingjelly's
# own kernels are the fast path; decided per call from the input's device.
LIF_IMPLS = ('spikingjelly', 'fused', 'auto')
# The implementation is a run-time choice, not part of a model: this variable sets the default for every neuron
# built without an explicit ``impl`` (e.g. in training subprocesses, where no model kwargs can be passed).
LIF_IMPL_ENV = 'TIMM_SPIKE_LIF_IMPL'


def _default_impl() -> str:
    impl = os.environ.get(LIF_IMPL_ENV, 'spikingjelly')
    if impl not in LIF_IMPLS:
        raise ValueError(f'{LIF_IMPL_ENV}={impl!r} is not a LIF implementation; choose one of {LIF_IMPLS}')
    return impl


@dataclass(frozen=True)
class LIFConfig:
    """Parameters of a multi-step LIF neuron (REFERENCE section 1: the paper's defaults)."""
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = True
    decay_input: bool = True
    surrogate: str = 'sigmoid'
    surrogate_alpha: Optional[float] = None  # None: the surrogate's usual sharpness (SURROGATES)
    # see LIF_IMPLS; the same neuron model and results, only speed differs. Default: $TIMM_SPIKE_LIF_IMPL or
    # 'spikingjelly'.
    impl: str = field(default_factory=_default_impl)

    def __post_init__(self):
        if self.impl not in LIF_IMPLS:
            raise ValueError(f'Unknown LIF impl {self.impl!r}; choose one of {LIF_IMPLS}')
        if float(self.tau) <= 1.0:
            raise ValueError(f'LIF tau must be > 1.0, got {self.tau}')
        if self.surrogate not in SURROGATES:
            raise ValueError(f'Unknown surrogate {self.surrogate!r}; choose one of {sorted(SURROGATES)}')
        object.__setattr__(self, 'tau', float(self.tau))  # spikingjelly 2.x requires a float tau
        object.__setattr__(self, 'v_threshold', float(self.v_threshold))

    def replace(self, **overrides: Any) -> 'LIFConfig':
        return replace(self, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, cfg: Union[None, 'LIFConfig', Dict[str, Any]]) -> 'LIFConfig':
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, dict):
            unknown = set(cfg) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f'Unknown LIF parameters {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}')
            return cls(**cfg)
        raise TypeError(f'lif_cfg must be a LIFConfig or dict, got {type(cfg).__name__}')


def create_surrogate(name: str = 'sigmoid', alpha: Optional[float] = None):
    if name not in SURROGATES:
        raise ValueError(f'Unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}')
    fn, default_alpha = SURROGATES[name]
    return fn(alpha=default_alpha if alpha is None else float(alpha))


class StatelessLIFNode(neuron.LIFNode):
    """spikingjelly's multi-step LIFNode that starts every call from the resting potential.

    Each call simulates a whole [T, ...] sequence, so independent inputs never leak membrane
    potential into each other (the reference SpikeCLIP code leaks it between text-encoder calls),
    and activation checkpointing recomputes a block from the same state as the first pass.

    No state outlives a call: the final potential spikingjelly leaves in ``self.v`` is part of the autograd
    graph, and keeping it on the module would keep that graph (and, under non-reentrant activation
    checkpointing, each recomputed block's saved tensors) alive until the next forward.

    Args:
        impl: 'spikingjelly', 'fused' or 'auto' (see ``LIF_IMPLS``); ``**kwargs`` go to ``LIFNode``.
    """

    def __init__(self, *args: Any, impl: str = 'spikingjelly', **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.impl = impl

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str):
        if value not in LIF_IMPLS:
            raise ValueError(f'Unknown LIF impl {value!r}; choose one of {LIF_IMPLS}')
        self._impl = value

    def _use_fused(self, x: torch.Tensor) -> bool:
        if self._impl == 'spikingjelly' or self.store_v_seq:
            return False
        if self._impl == 'auto' and x.device.type != 'cpu':
            return False
        return True

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        self.reset()
        try:
            if not args and not kwargs and self._use_fused(x_seq):
                params = fused_params_from_node(self)
                if params is not None:
                    return lif_multi_step_fused(x_seq, params)
                if self._impl == 'fused':
                    _logger.warning('fused LIF does not support surrogate %s; using spikingjelly',
                                    type(self.surrogate_function).__name__)
            return super().multi_step_forward(x_seq, *args, **kwargs)
        finally:
            if not self.store_v_seq:  # v_seq is kept only when asked for, for inspection
                self.reset()

    def extra_repr(self) -> str:
        return super().extra_repr() + f', impl={self._impl}'


def create_lif(cfg: Union[None, LIFConfig, Dict[str, Any]] = None, **overrides: Any) -> StatelessLIFNode:
    """Build a multi-step LIF neuron ([T, B, ...] in, spikes out) from a config plus overrides."""
    cfg = LIFConfig.from_any(cfg)
    if overrides:
        cfg = cfg.replace(**overrides)
    return StatelessLIFNode(
        tau=cfg.tau,
        decay_input=cfg.decay_input,
        v_threshold=cfg.v_threshold,
        v_reset=cfg.v_reset,
        surrogate_function=create_surrogate(cfg.surrogate, cfg.surrogate_alpha),
        detach_reset=cfg.detach_reset,
        step_mode='m',
        impl=cfg.impl,
    )


def set_lif_impl(model: torch.nn.Module, impl: str) -> int:
    """Switch every StatelessLIFNode of ``model`` to ``impl`` ('spikingjelly', 'fused', 'auto').

    Returns:
        The number of neuron layers switched.
    """
    if impl not in LIF_IMPLS:
        raise ValueError(f'Unknown LIF impl {impl!r}; choose one of {LIF_IMPLS}')
    n = 0
    for m in model.modules():
        if isinstance(m, StatelessLIFNode):
            m.impl = impl
            n += 1
    return n


def is_spiking_neuron(module: torch.nn.Module) -> bool:
    """True for any spikingjelly neuron (the layers whose outputs are spikes)."""
    return isinstance(module, neuron.BaseNode)
