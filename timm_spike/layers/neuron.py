"""Spiking neurons for timm_spike models, built on spikingjelly 2.x.

One place holds the LIF defaults of the papers (Spikingformer / SpikeCLIP): tau 2.0, threshold 1.0,
hard reset to 0, detached reset, input decay, and the Sigmoid(alpha=4) surrogate of the SpikeCLIP code.
"""
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Union

import torch
from spikingjelly.activation_based import neuron, surrogate

from .config import get_lif_impl, use_fused_lif
from .fused_lif import fused_params_from_node, lif_multi_step_fused

__all__ = ['LIFConfig', 'StatelessLIFNode', 'create_lif', 'create_surrogate', 'is_spiking_neuron', 'SURROGATES']

_logger = logging.getLogger(__name__)

# Surrogate gradients by name, with the sharpness each is used with in the literature.
SURROGATES = {
    'sigmoid': (surrogate.Sigmoid, 4.0),
    'atan': (surrogate.ATan, 2.0),
    'erf': (surrogate.Erf, 2.0),
}

@dataclass(frozen=True)
class LIFConfig:
    """Parameters of a multi-step LIF neuron (the papers' defaults).

    The implementation that runs the neuron is not a parameter: it is the process-wide switch
    ``timm_spike.layers.set_lif_impl`` (every implementation gives the same spikes and gradients).
    """
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = True
    decay_input: bool = True
    surrogate: str = 'sigmoid'
    surrogate_alpha: Optional[float] = None  # None: the surrogate's usual sharpness (SURROGATES)

    def __post_init__(self):
        if float(self.tau) <= 1.0:
            raise ValueError(f'LIF tau must be > 1.0, got {self.tau}')
        if self.surrogate not in SURROGATES:
            raise ValueError(f'Unknown surrogate {self.surrogate!r}; choose one of {sorted(SURROGATES)}')
        object.__setattr__(self, 'tau', float(self.tau))  # spikingjelly 2.x requires a float tau
        object.__setattr__(self, 'v_threshold', float(self.v_threshold))

    def replace(self, **overrides: Any) -> 'LIFConfig':
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            hint = ' (the implementation is a run-time switch: timm_spike.layers.set_lif_impl)' \
                if 'impl' in unknown else ''
            raise ValueError(f'Unknown LIF parameters {sorted(unknown)}{hint}; known: '
                             f'{sorted(self.__dataclass_fields__)}')
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
            if 'impl' in cfg:
                # configs written before the implementation became a run-time switch (Hub config.json files)
                _logger.debug('Ignoring impl=%r in a LIF config: the implementation is set with set_lif_impl()',
                              cfg['impl'])
                cfg = {k: v for k, v in cfg.items() if k != 'impl'}
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

    Which implementation runs is read at every call from the process-wide switch (``set_lif_impl``,
    ``lif_impl``): the fused LIF where it applies, else spikingjelly's own ``multi_step_forward``.
    """

    def _use_fused(self, x: torch.Tensor) -> bool:
        return not self.store_v_seq and use_fused_lif(x.device)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        self.reset()
        try:
            if not args and not kwargs and self._use_fused(x_seq):
                params = fused_params_from_node(self)
                if params is not None:
                    return lif_multi_step_fused(x_seq, params)
                if get_lif_impl() == 'fused':
                    _logger.warning('fused LIF does not support surrogate %s; using spikingjelly',
                                    type(self.surrogate_function).__name__)
            return super().multi_step_forward(x_seq, *args, **kwargs)
        finally:
            if not self.store_v_seq:  # v_seq is kept only when asked for, for inspection
                self.reset()


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
    )


def is_spiking_neuron(module: torch.nn.Module) -> bool:
    """True for any spikingjelly neuron (the layers whose outputs are spikes)."""
    return isinstance(module, neuron.BaseNode)
