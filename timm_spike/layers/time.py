"""Helpers for the time dimension: inputs are encoded to [T, B, ...] sequences."""
import torch

from .guards import check_max_time_steps

__all__ = ['check_time_steps', 'encode_direct']


def check_time_steps(T) -> int:
    """``T`` if it is an integer in [1, guards.MAX_TIME_STEPS]; a ``ValueError`` before anything is allocated."""
    return check_max_time_steps(T)


def encode_direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct (repeat) encoding: present the same real-valued input at each of T time steps."""
    return x.unsqueeze(0).expand(T, *x.shape)
