"""Event-driven kernels: a LIF neuron and the layer it feeds, computed from the spikes that fired.

A layer fed by spikes multiplies a 0/1 matrix by its weights: each output is the sum of the weight rows of the
inputs that fired. At the firing rates of trained SNNs (a few percent) that is a small fraction of a dense
product's work. Two event-driven implementations compute the same function as the dense layer:

- ``'native'``: ``_spike_kernels.c``, compiled at first use with the C compiler torch's inductor also needs
  (``$CC``, else ``cc``) and cached under ``~/.cache/timm_spike`` (``$TIMM_SPIKE_CACHE``). The neuron writes, per
  row, the list of the inputs that fired; the layer sums the matching weight rows in vector registers (OpenMP
  over rows, torch's thread count).
- ``'torch'``: torch's own operators (the fused LIF, ``nonzero``, ``F.embedding_bag(mode='sum')``), used where no
  compiler is available; slower than native but faster than dense at low rates (docs/benchmarks.md).

The layers (``timm_spike.layers.spike_layers``) call ``lif_linear`` / ``lif_conv3x3``; these return None when the
call should run dense: the switch is 'dense'; the tensor is not float32 on the CPU or needs autograd; or, under
'auto', the call's spike rate is above the layer's break-even (``SPARSE_MAX_RATE``).
"""
import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import get_spike_kernel
from .fused_lif import FusedLIFParams, lif_multi_step_fused

__all__ = ['SPARSE_MAX_RATE', 'native_kernels_available', 'native_kernels', 'sparse_allowed', 'lif_linear',
           'lif_conv3x3', 'lif_mlp', 'last_rate', 'last_spikes', 'last_mlp_spikes']

_logger = logging.getLogger(__name__)

# Spike rates above which 'auto' runs a layer dense: below the break-even of the native kernels against the layer's
# dense path, measured on a 2-core AVX2 CPU over the layer shapes of the registered models
# (recipes/bench/sparse_break_even.py, bench-results/cpu-sparse): linear layers 0.3-0.4; 3x3 convolutions 0.25-0.3
# from 64 input channels, about 0.1 below (the per-position work of the event-driven path weighs more), except
# after a max-pool of spikes, whose dense path pays a float max-pool the event-driven one does as an OR of bytes.
# The rate of a pooled convolution is the one of its pooled input.
SPARSE_MAX_RATE = {'linear': 0.25, 'conv3x3': 0.2, 'conv3x3, < 64 input channels': 0.08,
                   'conv3x3, < 64 input channels, pooled': 0.5}
_NARROW_CONV = 64


def _max_rate(kind: str, channels: int, pooled: bool = False) -> float:
    if kind == 'conv3x3' and channels < _NARROW_CONV:
        return SPARSE_MAX_RATE['conv3x3, < 64 input channels' + (', pooled' if pooled else '')]
    return SPARSE_MAX_RATE[kind]

# A 3x3 convolution scatters from its inputs below this many active inputs per position, else gathers.
_SCATTER_MAX_PER_POSITION = 2.0

_SOURCE = Path(__file__).with_name('_spike_kernels.c')
_CACHE_ENV = 'TIMM_SPIKE_CACHE'
_CFLAGS = ('-O3', '-march=native', '-ffp-contract=off', '-fopenmp', '-shared', '-fPIC')
_lib = None
_lib_state = 'unloaded'  # 'unloaded' | 'loaded' | 'failed'
_lib_lock = threading.Lock()
_last = threading.local()
_native_enabled = True


def _cache_dir() -> Path:
    return Path(os.environ.get(_CACHE_ENV) or Path.home() / '.cache' / 'timm_spike')


def _compile(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # into a temporary file of the same folder, then renamed: a concurrent process never loads half a library
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
    os.close(fd)
    try:
        cmd = [cc, *_CFLAGS, str(_SOURCE), '-o', tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f'{" ".join(cmd)} failed: {proc.stderr.strip()[:300]}')
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, i32, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.spike_lif_index.restype = i64
    lib.spike_lif_index.argtypes = [ptr, i64, i64, i64, i64, f32, f32, f32, i32, i32, ptr, ptr, ptr, ptr, i32]
    lib.spike_pool_index.restype = i64
    lib.spike_pool_index.argtypes = [ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr, i32]
    lib.spike_gather.restype = None
    lib.spike_gather.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i32, i32]
    lib.spike_mlp.restype = None
    lib.spike_mlp.argtypes = [ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr,
                              i64, i64, ptr, i32]
    lib.spike_scatter3x3.restype = None
    lib.spike_scatter3x3.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i32]
    return lib


def _load() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (after one warning) where they cannot be built or are turned off."""
    global _lib, _lib_state
    if not _native_enabled:
        return None
    if _lib_state != 'unloaded':
        return _lib
    with _lib_lock:
        if _lib_state == 'unloaded':
            try:
                cc = os.environ.get('CC', 'cc')
                key = hashlib.sha256(_SOURCE.read_bytes() + ' '.join((cc,) + _CFLAGS).encode()).hexdigest()[:16]
                path = _cache_dir() / f'spike_kernels_{key}.so'
                if not path.exists():
                    _compile(cc, path)
                _lib, _lib_state = _declare(ctypes.CDLL(str(path))), 'loaded'
            except Exception as e:  # no compiler or OpenMP, a read-only home...: torch's operators still work
                _logger.warning('Event-driven kernels not compiled (%s); sparse layers use torch operators', e)
                _lib, _lib_state = None, 'failed'
    return _lib


def native_kernels_available() -> bool:
    """Whether the compiled event-driven kernels load on this machine (compiles them on the first call)."""
    return _load() is not None


@contextmanager
def native_kernels(enabled: bool) -> Iterator[None]:
    """Run a block with (True) or without (False: torch's operators) the compiled kernels, e.g. to compare them."""
    global _native_enabled
    saved = _native_enabled
    _native_enabled = enabled
    try:
        yield
    finally:
        _native_enabled = saved


def last_rate() -> Optional[float]:
    """Spike rate seen by the last event-driven call of this thread (None before any): at the layer's input,
    after the max-pool of a pooled convolution."""
    return getattr(_last, 'rate', None)


def last_spikes() -> Optional[int]:
    """Spikes the neuron of the last event-driven layer call of this thread made (before any pool)."""
    return getattr(_last, 'spikes', None)


def last_mlp_spikes() -> Optional[Tuple[int, int]]:
    """Spikes of the two neurons of the last ``lif_mlp`` call of this thread."""
    return getattr(_last, 'spikes_pair', None)


def sparse_allowed(x: torch.Tensor) -> bool:
    """Whether the switch, device, dtype and autograd allow the event-driven path for this input at all."""
    if get_spike_kernel() == 'dense':
        return False
    return x.device.type == 'cpu' and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad)


def _rate_ok(nnz: int, numel: int, kind: str, channels: int, pooled: bool = False) -> bool:
    rate = nnz / max(numel, 1)
    _last.rate = rate
    return get_spike_kernel() == 'sparse' or rate <= _max_rate(kind, channels, pooled)


def _threads() -> int:
    return max(torch.get_num_threads(), 1)


def _native_lif_index(lib, u: torch.Tensor, T: int, p: FusedLIFParams, want_map: bool):
    """u [T', P, K] (T' 1 or T) -> index lists of the spikes [T * P rows] (or, asked for, their byte map instead),
    the count per row and in all."""
    Tu, P, K = u.shape
    if u.stride(2) != 1 or u.stride(1) != K:
        u = u.contiguous()
    t_stride = 0 if Tu == 1 else u.stride(0)
    idx = None if want_map else torch.empty((T * P, K), dtype=torch.int32)
    cnt = torch.empty((T * P,), dtype=torch.int32)
    spikes = torch.empty((T * P, K), dtype=torch.uint8) if want_map else None
    hard = p.v_reset is not None
    threads = _threads()
    scratch = torch.empty((threads, K), dtype=torch.float32)  # each thread's membrane potentials
    nnz = lib.spike_lif_index(
        u.data_ptr(), t_stride, T, P, K, p.tau, p.v_threshold, p.v_reset if hard else 0.0, int(hard),
        int(p.decay_input), None if want_map else idx.data_ptr(), cnt.data_ptr(), spikes.data_ptr() if want_map else None,
        scratch.data_ptr(), threads)
    return idx, cnt, nnz, spikes


def _lif_spikes(u: torch.Tensor, T: int, p: FusedLIFParams) -> torch.Tensor:
    """Float spikes [T, ...] of the fused LIF (torch path), a one-step input repeated T times."""
    if u.shape[0] == 1 and T > 1:
        u = u.expand(T, *u.shape[1:])
    return lif_multi_step_fused(u, p)


def _bags(mask2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    rows, cols = mask2d.nonzero(as_tuple=True)
    offsets = torch.searchsorted(rows, torch.arange(mask2d.shape[0], dtype=rows.dtype))
    return cols, offsets


def lif_linear(u: torch.Tensor, T: int, p: FusedLIFParams, weight_t: torch.Tensor, bias: Optional[torch.Tensor]
               ) -> Optional[torch.Tensor]:
    """``linear(LIF(u))`` from the spikes that fired: [T', ..., K] currents -> [T, ..., N].

    Args:
        u: The neuron's input current, time first; T' = 1 is a direct-encoded input (the same at every step).
        T: Time steps.
        p: The neuron's parameters.
        weight_t: The layer's weight transposed, [K, N] contiguous.
        bias: [N] or None.

    Returns:
        The layer's output, or None when the call should run dense (see the module docstring).
    """
    K, N = weight_t.shape
    lead = u.shape[1:-1]
    u3 = u.reshape(u.shape[0], -1, K)
    P = u3.shape[1]
    lib = _load()
    if lib is not None:
        idx, cnt, nnz, _ = _native_lif_index(lib, u3, T, p, want_map=False)
        _last.spikes = nnz
        if not _rate_ok(nnz, T * P * K, 'linear', K):
            return None
        out = torch.empty((T * P, N), dtype=torch.float32)
        # one position per row: B = rows, H = W = 1
        lib.spike_gather(idx.data_ptr(), cnt.data_ptr(), K, weight_t.data_ptr(),
                         bias.data_ptr() if bias is not None else None, out.data_ptr(), T * P, 1, 1, N, 1,
                         _threads())
        return out.reshape(T, *lead, N)
    s = _lif_spikes(u3, T, p).reshape(T * P, K)
    cols, offsets = _bags(s)
    _last.spikes = cols.numel()
    if not _rate_ok(cols.numel(), s.numel(), 'linear', K):
        return None
    out = F.embedding_bag(cols, weight_t, offsets, mode='sum')
    if bias is not None:
        out += bias
    return out.reshape(T, *lead, N)


def lif_conv3x3(u: torch.Tensor, T: int, p: FusedLIFParams, weight9: torch.Tensor, bias: Optional[torch.Tensor],
                pool: bool = False) -> Optional[torch.Tensor]:
    """``conv3x3([max-pool](LIF(u)))`` from the spikes that fired, channels last.

    Args:
        u: The neuron's input current [T', B, H, W, C]; T' = 1 is a direct-encoded input.
        T: Time steps.
        p: The neuron's parameters.
        weight9: [9, C, N] contiguous, tap-major (``conv.weight.permute(2, 3, 1, 0).reshape(9, C, N)``).
        bias: [N] or None.
        pool: A 3x3 / stride 2 / padding 1 max-pool of the spikes first (an OR of binary values).

    Returns:
        [T, B, H', W', N] (stride 1, padding 1), or None when the call should run dense.
    """
    _, B, H, W, C = u.shape
    N = weight9.shape[-1]
    Ho, Wo = ((H - 1) // 2 + 1, (W - 1) // 2 + 1) if pool else (H, W)
    P = B * Ho * Wo
    lib = _load()
    if lib is not None:
        idx, cnt, nnz, spikes = _native_lif_index(lib, u.reshape(u.shape[0], B * H * W, C), T, p, want_map=pool)
        _last.spikes = nnz  # the neuron's spikes (before the pool)
        if pool:
            idx = torch.empty((T * P, C), dtype=torch.int32)
            cnt = torch.empty((T * P,), dtype=torch.int32)
            scratch = torch.empty((_threads(), C), dtype=torch.uint8)
            nnz = lib.spike_pool_index(spikes.data_ptr(), T * B, H, W, C, Ho, Wo, idx.data_ptr(), cnt.data_ptr(),
                                       scratch.data_ptr(), _threads())
        if not _rate_ok(nnz, T * P * C, 'conv3x3', C, pool):
            return None
        out = torch.empty((T * B, Ho, Wo, N), dtype=torch.float32)
        args = (idx.data_ptr(), cnt.data_ptr(), C, weight9.data_ptr(), bias.data_ptr() if bias is not None else None,
                out.data_ptr(), T * B, Ho, Wo, N)
        if nnz < _SCATTER_MAX_PER_POSITION * T * P:
            lib.spike_scatter3x3(*args, _threads())
        else:
            lib.spike_gather(*args, 3, _threads())
        return out.reshape(T, B, Ho, Wo, N)
    s = _lif_spikes(u, T, p).reshape(T * B, H, W, C)
    _last.spikes = int(s.count_nonzero())
    if pool:
        s = F.max_pool2d(s.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    s = s.to(torch.uint8)
    if not _rate_ok(int(s.count_nonzero()), s.numel(), 'conv3x3', C, pool):
        return None
    # the 3x3 neighbourhoods as a uint8 view (no float im2col), then one bag per output position
    s = F.pad(s, (0, 0, 1, 1, 1, 1))
    patches = torch.stack([s[:, dy:dy + Ho, dx:dx + Wo] for dy in range(3) for dx in range(3)], dim=3)
    cols, offsets = _bags(patches.reshape(T * P, 9 * C))
    out = F.embedding_bag(cols, weight9.reshape(9 * C, N), offsets, mode='sum')
    if bias is not None:
        out += bias
    return out.reshape(T, B, Ho, Wo, N)


def _lif_args(p: FusedLIFParams) -> Tuple[torch.Tensor, torch.Tensor]:
    hard = p.v_reset is not None
    return (torch.tensor([p.tau, p.v_threshold, p.v_reset if hard else 0.0], dtype=torch.float32),
            torch.tensor([int(hard), int(p.decay_input)], dtype=torch.int32))


def lif_mlp(u: torch.Tensor, T: int, p1: FusedLIFParams, w1t: torch.Tensor, b1: Optional[torch.Tensor],
            p2: FusedLIFParams, w2t: torch.Tensor, b2: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``linear2(LIF2(linear1(LIF1(u))))`` in one pass per position (the hidden layer never leaves the cache):
    [T', ..., K] -> [T, ..., N], the result of ``lif_linear`` twice, bit for bit.

    Native kernels only; None where they are unavailable, or under 'auto' when either layer's rate passes its
    break-even (the kernel stops early then and the caller runs the layers one by one, each dense or not).
    """
    lib = _load()
    if lib is None:
        return None
    K, H = w1t.shape
    N = w2t.shape[1]
    lead = u.shape[1:-1]
    u3 = u.reshape(u.shape[0], -1, K)
    if u3.stride(2) != 1 or u3.stride(1) != K:
        u3 = u3.contiguous()
    P = u3.shape[1]
    limit = SPARSE_MAX_RATE['linear'] if get_spike_kernel() != 'sparse' else 1.0
    (l1, f1), (l2, f2) = _lif_args(p1), _lif_args(p2)
    counts = torch.zeros(3, dtype=torch.int64)
    threads = _threads()
    scratch = torch.empty((threads, 2 * K + 3 * H), dtype=torch.float32)
    out = torch.empty((T, P, N), dtype=torch.float32)
    lib.spike_mlp(u3.data_ptr(), 0 if u3.shape[0] == 1 else u3.stride(0), T, P, K, H, N, l1.data_ptr(),
                  f1.data_ptr(), l2.data_ptr(), f2.data_ptr(), w1t.data_ptr(), b1.data_ptr() if b1 is not None else None,
                  w2t.data_ptr(), b2.data_ptr() if b2 is not None else None, out.data_ptr(), counts.data_ptr(),
                  int(limit * T * P * K), int(limit * T * P * H), scratch.data_ptr(), threads)
    if counts[2]:
        return None
    _last.rate = float(counts[1]) / (T * P * H)
    _last.spikes_pair = (int(counts[0]), int(counts[1]))
    return out.reshape(T, *lead, N)
