"""Firing-rate calibration of untrained spiking models, for benchmarks that need realistic spike rates.

A randomly initialised SNN fires at arbitrary rates (often not at all in eval mode), so neither its energy nor
the speed of an event-driven kernel says anything about a trained one. ``calibrate_firing_rates`` sets the shift
(bias) of the layer that drives each neuron so that the neuron fires at a chosen rate on the given inputs: a
model with trained-like rates and otherwise random weights. Layers are visited in the order they run, each by
bisection over one shared bias value, so every neuron is calibrated on the input its calibrated predecessors
give it.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from timm_spike.layers import is_spiking_neuron

from .counting import calibrate_bn

__all__ = ['calibrate_firing_rates']


class _Stop(Exception):
    pass


def _drivers(model: nn.Module, run: Callable[[], Any]) -> List[Tuple[str, nn.Module, nn.Module]]:
    """(name, layer, neuron): for each neuron, the last layer with a bias that ran before it."""
    order: List[Tuple[str, nn.Module]] = []
    hooks = []
    for name, m in model.named_modules():
        if is_spiking_neuron(m) or (isinstance(getattr(m, 'bias', None), nn.Parameter) and not list(m.children())):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod))))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    pairs, last, seen = [], None, set()
    for name, m in order:
        if is_spiking_neuron(m):
            if last is not None and id(m) not in seen:
                pairs.append((last[0], last[1], m))
                seen.add(id(m))
            last = None
        else:
            last = (name, m)
    return pairs


def calibrate_firing_rates(
        model: nn.Module,
        inputs: Any,
        rate: float,
        forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
        steps: int = 14,
) -> Dict[str, float]:
    """Set the bias of the layer driving each spiking neuron so that the neuron fires at ``rate`` on ``inputs``.

    BatchNorm statistics are first re-estimated on ``inputs`` (``calibrate_bn``). The model is left in eval mode.

    Args:
        model: A spiking model (its neurons are spikingjelly neurons).
        inputs: One batch, passed to ``forward_fn``.
        rate: Target firing rate of every calibrated neuron, in (0, 1).
        forward_fn: ``forward_fn(model, inputs)``; default ``model(inputs)``.
        steps: Bisection steps per neuron.

    Returns:
        {driving layer name: the rate its neuron reached}.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f'rate must be in (0, 1), got {rate}')
    forward_fn = forward_fn or (lambda m, b: m(b))
    calibrate_bn(model, [inputs], forward_fn)
    model.eval()
    run = lambda: forward_fn(model, inputs)  # noqa: E731
    reached = {}
    for name, layer, neuron in _drivers(model, run):
        measured = {}

        def hook(mod, i, o):
            measured['rate'] = float(o.float().mean())
            raise _Stop  # the rest of the forward does not matter for this neuron

        handle = neuron.register_forward_hook(hook)
        lo, hi = -8.0, 8.0
        try:
            with torch.no_grad():
                for _ in range(steps):
                    mid = (lo + hi) / 2
                    layer.bias.fill_(mid)
                    try:
                        run()
                    except _Stop:
                        pass
                    if measured['rate'] < rate:
                        lo = mid
                    else:
                        hi = mid
                layer.bias.fill_((lo + hi) / 2)
                try:
                    run()
                except _Stop:
                    pass
        finally:
            handle.remove()
        reached[name] = measured['rate']
    return reached
