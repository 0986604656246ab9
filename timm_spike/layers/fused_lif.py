"""A fused multi-step LIF neuron for the CPU: one autograd Function over the whole time loop.

Why this exists next to spikingjelly: on CUDA spikingjelly 2.x picks its own CUDA/Triton kernels, which are
the fast path there. On the CPU it runs a Python loop of about ten small tensor ops per time step (each one a
full pass over memory) and saves two tensors per layer for backward (the charged potential and the input).
Here the time loop is one ``torch.compile``d function (inductor fuses the T steps into a single pass that keeps
the membrane potential in registers), spikes are float masks ``(h >= thr).to(dtype)`` rather than
``torch.where``, and backward saves ONE tensor per layer, the charged (pre-spike) potentials ``h_seq``, from
which spikes, resets and surrogate gradients are recomputed.

The arithmetic follows spikingjelly's LIF exactly (same charge, fire and reset formulas in the same order,
same surrogate derivatives), so spikes and gradients match its ``LIFNode`` (tested). Compilation is paid once
per process and (T, dtype, neuron settings), with sizes dynamic; inductor's on-disk cache makes later
processes cheap. Where compiling is impossible (no C++ compiler, an unsupported platform) the same functions
run eagerly after one logged warning.
"""
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from spikingjelly.activation_based import surrogate
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['FusedLIFParams', 'lif_multi_step_fused', 'fused_params_from_node', 'set_fused_compile',
           'fused_compile_enabled', 'SURROGATE_IDS']

_logger = logging.getLogger(__name__)

# Surrogate derivative ids, matching the spikingjelly surrogate classes supported by the fused kernel.
SURROGATE_IDS = {surrogate.Sigmoid: 'sigmoid', surrogate.ATan: 'atan', surrogate.Erf: 'erf'}


@dataclass(frozen=True)
class FusedLIFParams:
    """The constants of a LIF layer, as the fused kernels need them (hashable: one compiled variant each)."""
    tau: float = 2.0
    decay_input: bool = True
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0  # None: soft reset (subtract the threshold)
    detach_reset: bool = True
    surrogate: str = 'sigmoid'
    alpha: float = 4.0


def fused_params_from_node(node: torch.nn.Module) -> Optional[FusedLIFParams]:
    """FusedLIFParams of a spikingjelly LIFNode, or None when the fused kernel cannot reproduce it.

    Unsupported: surrogates other than Sigmoid/ATan/Erf, surrogates with ``spiking=False`` (they output the
    smooth function, not spikes), and a non-float tau.
    """
    sg = node.surrogate_function
    name = SURROGATE_IDS.get(type(sg))
    if name is None or not getattr(sg, 'spiking', True) or not isinstance(node.tau, float):
        return None
    return FusedLIFParams(
        tau=node.tau, decay_input=bool(node.decay_input), v_threshold=float(node.v_threshold),
        v_reset=None if node.v_reset is None else float(node.v_reset), detach_reset=bool(node.detach_reset),
        surrogate=name, alpha=float(sg.alpha))


def _surrogate_grad(x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    # Derivatives of spikingjelly's surrogate primitives (same expressions as its CPU kernels).
    if name == 'sigmoid':
        s = torch.sigmoid(alpha * x)
        return (1 - s) * s * alpha
    if name == 'atan':
        z = x * (math.pi / 2 * alpha)
        return (alpha / 2) / (1 + z * z)
    if name == 'erf':
        z = alpha * x
        return (alpha / math.sqrt(math.pi)) * torch.exp(-z * z)
    raise ValueError(f'Unsupported surrogate {name!r}')


def _charge(x: torch.Tensor, v, p: FusedLIFParams):
    reset_value = 0.0 if p.v_reset is None else p.v_reset
    if p.decay_input:
        return v + (x - (v - reset_value)) / p.tau
    return v - (v - reset_value) / p.tau + x


def _reset(h: torch.Tensor, spike: torch.Tensor, p: FusedLIFParams):
    if p.v_reset is None:
        return h - spike * p.v_threshold
    return spike * p.v_reset + (1 - spike) * h


def _forward_impl(x_seq: torch.Tensor, p: FusedLIFParams, save_h: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x_seq: [T, N] -> spikes [T, N] (x's dtype) and, if save_h, the charged potentials h [T, N]."""
    compute = torch.promote_types(x_seq.dtype, torch.float32)
    v = torch.full_like(x_seq[0], 0.0 if p.v_reset is None else p.v_reset, dtype=compute)
    spikes, hs = [], []
    for t in range(x_seq.shape[0]):  # unrolled by the compiler: T is fixed per compiled variant
        h = _charge(x_seq[t].to(compute), v, p)
        spike = (h >= p.v_threshold).to(compute)
        v = _reset(h, spike, p)
        spikes.append(spike.to(x_seq.dtype))
        if save_h:
            hs.append(h)
    return torch.stack(spikes), (torch.stack(hs) if save_h else None)


def _backward_impl(grad_spikes: torch.Tensor, h_seq: torch.Tensor, p: FusedLIFParams) -> torch.Tensor:
    """Gradient w.r.t. the input sequence, from the spikes' gradient and the saved charged potentials."""
    carry = torch.zeros_like(h_seq[0])  # gradient reaching v[t] from step t+1
    grads = []
    for t in range(h_seq.shape[0] - 1, -1, -1):
        h = h_seq[t]
        sg = _surrogate_grad(h - p.v_threshold, p.surrogate, p.alpha)
        if p.v_reset is None:  # soft reset: v = h - thr * spike
            reset_grad = 1.0 if p.detach_reset else 1 - p.v_threshold * sg
        else:  # hard reset: v = spike * v_reset + (1 - spike) * h
            reset_grad = 1 - (h >= p.v_threshold).to(h.dtype)
            if not p.detach_reset:
                reset_grad = reset_grad + (p.v_reset - h) * sg
        gh = grad_spikes[t].to(h.dtype) * sg + carry * reset_grad
        grads.append(gh / p.tau if p.decay_input else gh)
        carry = gh - gh / p.tau  # dh[t]/dv[t-1] = 1 - 1/tau in both charge forms
    grads.reverse()
    return torch.stack(grads).to(grad_spikes.dtype)


# Compile control. TIMM_SPIKE_FUSED_COMPILE=0 forces eager (e.g. to debug, or where compiling is too slow).
_compile_enabled = os.environ.get('TIMM_SPIKE_FUSED_COMPILE', '1') not in ('0', 'false', 'False')
_compile_failed = False
_compiled: Dict[str, Callable] = {}
_lock = threading.Lock()


def set_fused_compile(enabled: bool) -> None:
    """Turn ``torch.compile`` of the fused kernels on or off for this process (eager runs the same math)."""
    global _compile_enabled
    _compile_enabled = bool(enabled)


def fused_compile_enabled() -> bool:
    """True when the fused kernels run compiled (enabled and not fallen back to eager)."""
    return _compile_enabled and not _compile_failed


def _get(name: str, fn: Callable) -> Callable:
    if not fused_compile_enabled():
        return fn
    with _lock:
        if name not in _compiled:
            # dynamic=True: one compiled variant serves every layer width and batch size; T and the neuron
            # constants are baked in (the loop is unrolled), so each (T, dtype, params) compiles once.
            _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
        return _compiled[name]


# Variants compiled per kernel: T x neuron constants x (train, eval) x input layouts. dynamo's default limit
# (8 per function) would be reached by one model at four values of T; past the limit it would run eagerly.
_RECOMPILE_LIMIT = 64


def _run(name: str, fn: Callable, *args):
    global _compile_failed
    if torch.compiler.is_compiling():
        # Inside torch.compile / torch.export (ONNX's exporter included): the caller's graph takes the plain
        # loop in, unrolled over T; a nested compiled call cannot be traced (nor can the dispatch-mode query below).
        return fn(*args)
    # Meta tensors (shape-only passes, e.g. MAC counting) and calls under a dispatch mode (op counters) run
    # eagerly: compiling fails there, and one failure would switch compiling off for the whole process.
    on_meta = any(isinstance(a, torch.Tensor) and a.is_meta for a in args)
    in_mode = _get_current_dispatch_mode() is not None
    if fused_compile_enabled() and not on_meta and not in_mode:
        # detach(): the kernels need no autograd tracking, and a detached tensor is not a view, so dynamo
        # guards on the tensor's own layout rather than on its base's (which would recompile per caller).
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return _get(name, fn)(*args)
        except Exception as e:  # no C++ compiler, unsupported platform, ...: keep working, eagerly
            _compile_failed = True
            _logger.warning(
                'torch.compile of the fused LIF kernel failed (%s: %s); running it eagerly (same results, '
                'slower). Set TIMM_SPIKE_FUSED_COMPILE=0 to skip the attempt.', type(e).__name__, str(e)[:300])
    return fn(*args)


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, p: FusedLIFParams) -> torch.Tensor:
        spikes, h_seq = _run('forward_train', _forward_impl, x_seq, p, True)
        ctx.save_for_backward(h_seq)  # the only tensor kept for backward
        ctx.p = p
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        (h_seq,) = ctx.saved_tensors
        return _run('backward', _backward_impl, grad_spikes.contiguous(), h_seq, ctx.p), None


def lif_multi_step_fused(x_seq: torch.Tensor, p: FusedLIFParams = FusedLIFParams()) -> torch.Tensor:
    """Multi-step LIF from rest: [T, ...] input currents -> [T, ...] spikes (same dtype as the input).

    Args:
        x_seq: Input sequence, time-major ``[T, ...]``, floating point.
        p: Neuron constants.

    Returns:
        Spikes as a float mask of x_seq's shape and dtype; differentiable w.r.t. x_seq through the surrogate.
    """
    if x_seq.ndim < 1 or not x_seq.is_floating_point():
        raise ValueError(f'Expected a floating point [T, ...] sequence, got {x_seq.dtype} of shape {tuple(x_seq.shape)}')
    shape = x_seq.shape
    x2 = x_seq.reshape(shape[0], -1)
    if x2.shape[1] == 0:
        return torch.zeros_like(x_seq)
    if torch.is_grad_enabled() and x_seq.requires_grad:
        out = _FusedLIF.apply(x2, p)
    else:  # inference: no potentials written, one pass
        out = _run('forward_eval', _forward_impl, x2, p, False)[0]
    return out.reshape(shape)
