"""Readout over time: combine a [T, B, C] sequence into [B, C]."""
import torch
import torch.nn as nn

__all__ = ['TemporalReadout', 'READOUTS']

READOUTS = ('mean', 'weighted')


class TemporalReadout(nn.Module):
    """Mean over time steps (Spikingformer), or a learned convex combination of them.

    The SpikeCLIP reference code uses un-normalised weights hard-wired to T=4; here 'weighted' is a
    softmax over T learned logits (initialised to zeros, i.e. the mean), so its output keeps the scale
    of the mean. 'mean' works for any T at inference; 'weighted' needs the T it was built with.
    """

    def __init__(self, T: int, mode: str = 'mean'):
        super().__init__()
        if mode not in READOUTS:
            raise ValueError(f'Unknown readout {mode!r}; choose one of {READOUTS}')
        self.T = int(T)
        self.mode = mode
        self.logits = nn.Parameter(torch.zeros(self.T)) if mode == 'weighted' else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 'mean':
            return x.mean(0)
        if x.shape[0] != self.T:
            raise ValueError(
                f"readout='weighted' was built for T={self.T} but got T={x.shape[0]} time steps; "
                f"use readout='mean' to change T after training")
        w = self.logits.softmax(0).to(x.dtype)
        return torch.einsum('t,t...->...', w, x)

    def extra_repr(self) -> str:
        return f'T={self.T}, mode={self.mode}'
