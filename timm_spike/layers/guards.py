"""Input guards: what a spiking model refuses instead of computing a plausible wrong answer.

A spiking tower hides bad input well: a NaN pixel never crosses a threshold, so an all-NaN image embeds like an
all-zero one; an integer image is cast and spikes on raw 0-255 values; a ``[T', B, C, H, W]`` sequence with T' != T
runs T' steps; an integer checkpoint tensor is cast into a float parameter without a word. These guards turn each
into a ``ValueError`` that says what and where.

- `check_image`: floating point only (fp16 / bf16 / fp64 images are converted to the model's dtype; integer and
  bool images are refused: they need the model's preprocessing, which scales and normalises them), finite values
  (NaN / inf refused with their count and the samples holding them; ``set_check_finite(False)`` or
  ``TIMM_SPIKE_CHECK_FINITE=0`` turns this off), and a 5-D input's time dimension equal to the model's T. The
  finite-value check runs in eager mode only: ``torch.compile`` and ``torch.export`` (ONNX's exporter included)
  trace with symbolic tensors, where a data-dependent check cannot be decided, so it is left out of their graphs;
  the shape and dtype checks run while tracing.
- `check_max_time_steps`: T at most ``MAX_TIME_STEPS`` (1024), checked before anything is allocated (a T of 10**6
  otherwise runs for a minute before the allocator gives up). Direct encoding repeats the image T times, so
  memory and time grow linearly with T; the paper uses T = 4.
- `check_state_dict_dtypes`: a checkpoint tensor whose dtype differs from the parameter or buffer it is loaded
  into (an integer tensor into a float parameter, fp16 into fp32...) is refused with the key names.
"""
import os
from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, Optional

import torch

__all__ = ['CHECK_FINITE_ENV', 'MAX_TIME_STEPS', 'check_finite', 'check_image', 'check_max_time_steps',
           'check_state_dict_dtypes', 'check_finite_enabled', 'set_check_finite', 'finite_checks']

MAX_TIME_STEPS = 1024
CHECK_FINITE_ENV = 'TIMM_SPIKE_CHECK_FINITE'

_check_finite: Optional[bool] = None  # None: from the environment (default on)


def set_check_finite(enable: Optional[bool]) -> None:
    """Turn the non-finite input check on or off for this process (None: back to ``$TIMM_SPIKE_CHECK_FINITE``)."""
    global _check_finite
    _check_finite = enable


def check_finite_enabled() -> bool:
    if _check_finite is not None:
        return _check_finite
    return os.environ.get(CHECK_FINITE_ENV, '1').strip().lower() not in ('0', 'false', 'no', 'off')


@contextmanager
def finite_checks(enable: bool) -> Iterator[None]:
    """Context manager form of `set_check_finite`."""
    global _check_finite
    saved = _check_finite
    _check_finite = enable
    try:
        yield
    finally:
        _check_finite = saved


def check_max_time_steps(T: int, what: str = 'T') -> int:
    """``T`` if it is an integer in [1, MAX_TIME_STEPS]; a ``ValueError`` otherwise (before any allocation)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f'{what} (number of time steps) must be an integer >= 1, got {T!r}')
    if T > MAX_TIME_STEPS:
        raise ValueError(f'{what}={T} exceeds the supported maximum of {MAX_TIME_STEPS} time steps (direct encoding '
                         f'repeats the input T times: memory and time grow linearly with T; the paper uses T=4)')
    return T


def check_finite(x: torch.Tensor, where: str = 'input', batch_dim: int = 0) -> torch.Tensor:
    """``x`` unchanged if every value is finite; else a ``ValueError`` naming the count, kinds and samples.

    Skipped while ``torch.compile`` / ``torch.export`` trace (see the module docstring).
    """
    if not check_finite_enabled() or not x.is_floating_point() or x.device.type == 'meta' or _tracing():
        return x
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    bad = ~finite
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    if x.ndim > batch_dim:
        per_sample = bad.movedim(batch_dim, 0).reshape(x.shape[batch_dim], -1).any(1)
        samples = per_sample.nonzero().flatten().tolist()
        shown = ', '.join(map(str, samples[:8])) + (', ...' if len(samples) > 8 else '')
        at = f' in {len(samples)} of {x.shape[batch_dim]} samples (index {shown})'
    else:
        at = ''
    raise ValueError(f'{where}: {n_nan + n_inf} non-finite values ({n_nan} NaN, {n_inf} inf) in a tensor of shape '
                     f'{tuple(x.shape)}{at}. A spiking model would turn them into a plausible embedding; clean the '
                     f'input (set_check_finite(False) or {CHECK_FINITE_ENV}=0 turns this check off)')


def check_image(x: torch.Tensor, T: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                where: str = 'image') -> torch.Tensor:
    """Check (and convert) an image batch for a spiking image tower.

    Args:
        x: ``[B, C, H, W]`` images, or a ``[T, B, C, H, W]`` encoded sequence.
        T: The model's time steps; a 5-D input must have exactly this many.
        dtype: The model's floating dtype: other floating dtypes are converted to it.
        where: Name of the input in messages.

    Returns:
        ``x``, converted to ``dtype`` if needed.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{where}: expected a torch.Tensor, got {type(x).__name__}')
    if not x.is_floating_point():
        raise ValueError(
            f'{where}: dtype {x.dtype} is not floating point. Images must be preprocessed first (scaled to [0, 1] and '
            f'normalised with the model\'s mean and std, e.g. the transform of open_clip.create_model_and_transforms '
            f'or timm.data.create_transform); a raw {x.dtype} image would spike on its 0-255 values')
    if x.ndim not in (4, 5):
        raise ValueError(f'{where}: expected [B, C, H, W] images or a [T, B, C, H, W] sequence, got shape '
                         f'{tuple(x.shape)}')
    if x.ndim == 5 and T is not None and x.shape[0] != T:
        raise ValueError(f'{where}: a 5-D input is a [T, B, C, H, W] sequence and this model runs T={T} time steps, '
                         f'but the input has {x.shape[0]}; pass [B, C, H, W] images (repeated T times) or a '
                         f'sequence of {T} steps')
    if dtype is not None and dtype.is_floating_point and x.dtype != dtype and not torch.is_autocast_enabled():
        x = x.to(dtype)
    return check_finite(x, where, batch_dim=1 if x.ndim == 5 else 0)


def check_state_dict_dtypes(model_state: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                            what: str = 'checkpoint') -> None:
    """Refuse checkpoint tensors whose dtype differs from the model's tensor of the same name.

    ``load_state_dict`` would cast them silently (int32 weights into float parameters, truncated logit scales...).
    """
    bad: Dict[str, str] = {}
    for k, v in state_dict.items():
        own = model_state.get(k)
        if own is None or not isinstance(v, torch.Tensor) or not isinstance(own, torch.Tensor):
            continue
        if v.dtype != own.dtype:
            bad[k] = f'{k}: {str(v.dtype).replace("torch.", "")} vs model {str(own.dtype).replace("torch.", "")}'
    if bad:
        items = list(bad.values())
        shown = '; '.join(items[:6]) + (f'; ... ({len(items)} in all)' if len(items) > 6 else '')
        kinds = {str(state_dict[k].dtype) for k in bad}
        hint = ('integer or bool tensors where the model holds floats are not weights of this model'
                if any(not state_dict[k].is_floating_point() and model_state[k].is_floating_point() for k in bad)
                else 'convert the checkpoint to the model\'s dtype first (e.g. {k: v.float() ...}), or build the '
                     'model in the checkpoint\'s dtype')
        raise ValueError(f'{what} has tensors of another dtype than the model ({", ".join(sorted(kinds))}): {shown}. '
                         f'{hint}')


def _tracing() -> bool:
    # torch.compile, torch.export (and the exporters built on it, ONNX's included) trace with symbolic or fake
    # tensors: a check on the values (all finite?) cannot be decided there and would break the graph.
    return torch.compiler.is_compiling()
