"""Helpers for the time dimension: inputs are encoded to [T, B, ...] sequences."""
import torch

__all__ = ['check_time_steps', 'encode_direct']


def check_time_steps(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f'T (number of time steps) must be an integer >= 1, got {T!r}')
    return T


def encode_direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct (repeat) encoding: present the same real-valued input at each of T time steps."""
    return x.unsqueeze(0).expand(T, *x.shape)
