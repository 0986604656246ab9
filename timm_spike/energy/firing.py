"""Firing rates of every spiking neuron layer, measured with spikingjelly's OutputMonitor."""
from typing import Dict, Iterable, Optional, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import monitor, neuron
from tqdm.auto import tqdm

__all__ = ['FiringRateRecorder', 'firing_rates']


def _spike_count(spikes: torch.Tensor):
    return spikes.detach().sum().item(), spikes.numel()


class FiringRateRecorder:
    """Accumulates spikes / (neurons x time steps) per neuron layer over any number of forwards.

    Counts are summed over calls before dividing, so a rate averaged over a data loader weighs every
    neuron-step equally, whatever the batch sizes.
    """

    def __init__(self, model: nn.Module):
        self._monitor = monitor.OutputMonitor(model, neuron.BaseNode, _spike_count)
        if not self._monitor.monitored_layers:
            raise ValueError(f'{type(model).__name__} has no spiking neuron layers to measure firing rates on')

    @property
    def layers(self):
        return list(self._monitor.monitored_layers)

    def rates(self) -> Dict[str, float]:
        out = {}
        for name in self._monitor.monitored_layers:
            records = self._monitor[name]
            spikes = sum(r[0] for r in records)
            count = sum(r[1] for r in records)
            out[name] = spikes / count if count else float('nan')
        return out

    def mean_rate(self) -> float:
        """Overall rate: all spikes over all neuron-steps."""
        spikes = sum(r[0] for r in self._monitor.records)
        count = sum(r[1] for r in self._monitor.records)
        return spikes / count if count else float('nan')

    def close(self):
        self._monitor.close()

    def __enter__(self) -> 'FiringRateRecorder':
        return self

    def __exit__(self, *exc):
        self.close()


@torch.no_grad()
def firing_rates(model: nn.Module, inputs: Union[torch.Tensor, Iterable], progress: bool = False) -> Dict[str, float]:
    """Firing rate per neuron layer for a batch, or averaged over an iterable of batches / (x, y) pairs.

    Args:
        model: A model with spikingjelly neurons (run as it is: call ``model.eval()`` first for inference).
        inputs: A batch tensor, or an iterable (e.g. a DataLoader) of tensors or (input, target) pairs.
        progress: Show a tqdm progress bar over the batches.
    """
    batches = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    with FiringRateRecorder(model) as rec:
        for batch in tqdm(batches, desc='firing rates', disable=not progress,
                          total=len(batches) if hasattr(batches, '__len__') else None):
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        return rec.rates()
