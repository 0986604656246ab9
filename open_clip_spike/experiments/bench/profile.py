"""Where one step's time goes: self time and FLOPs per kind of operation."""
import time
from typing import Any, Callable, Dict



from .flops import count_flops
from .timing import _sync


# Kinds of operation a step's time and FLOPs are split into (profile_step). Checked in order, by aten/profiler name.
_GEMM_KINDS = ('convolution', 'matmul')
_KIND_RULES = (
    ('fused LIF (compiled)', ('CompiledFxGraph', 'CompiledFunction', 'Torch-Compiled Region', '_FusedLIF',
                              'TorchDynamo', 'Pregraph bytecode')),
    ('convolution', ('conv',)),
    ('matmul', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::matmul', 'aten::linear',
                'scaled_dot_product', 'aten::einsum')),
    ('batch norm', ('batch_norm',)),
    ('layer norm', ('layer_norm',)),
)


def _op_kind(name: str) -> str:
    for kind, keys in _KIND_RULES:
        if any(k in name for k in keys):
            return kind
    return 'other (elementwise, copies, reductions)'


def _flop_kind(op: str) -> str:
    if 'conv' in op:
        return 'convolution'
    if op in ('mm', 'addmm', 'bmm', 'baddbmm') or 'scaled_dot_product' in op:
        return 'matmul'
    return 'other (elementwise, copies, reductions)'


def profile_step(fn: Callable[[], Any], device: str = 'cpu', top: int = 8) -> Dict[str, Any]:
    """Where one call's time goes: self time per kind of operation (``torch.profiler``) next to its FLOPs.

    The call runs once untimed, once under ``FlopCounterMode`` and once under the profiler. Ops inside the
    optimizer's step count as 'optimizer' whatever they are. Time shares are of the profiled ops' self time
    (CPU time of the calling thread; on CUDA the kernels' device time where the profiler records it).

    Returns:
        dict(wall_s, kinds={kind: dict(time_share, flop_share, gflop)}, top_ops=[dict(name, kind, time_share,
        calls)]).
    """
    from torch.profiler import ProfilerActivity, profile
    fn()
    _sync(device)
    total_flops, per_op = count_flops(fn)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith('cuda') else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall = time.perf_counter() - t0
    kinds: Dict[str, Dict[str, float]] = {}
    ops: Dict[str, Dict[str, Any]] = {}
    for e in prof.events():
        us = e.self_device_time_total if device.startswith('cuda') and e.self_device_time_total else e.self_cpu_time_total
        if not us:
            continue
        parent, kind = e.cpu_parent, None
        while parent is not None and kind is None:
            if parent.name.startswith('Optimizer.step'):
                kind = 'optimizer'
            parent = parent.cpu_parent
        kind = kind or ('optimizer' if e.name.startswith('Optimizer.step') else _op_kind(e.name))
        kinds.setdefault(kind, dict(us=0.0, flops=0))['us'] += us
        op = ops.setdefault(e.name, dict(name=e.name, kind=kind, us=0.0, calls=0))
        op['us'] += us
        op['calls'] += 1
    for op, f in per_op.items():
        kinds.setdefault(_flop_kind(op), dict(us=0.0, flops=0))['flops'] += f
    total_us = sum(k['us'] for k in kinds.values()) or 1.0
    out_kinds = {
        kind: dict(time_share=v['us'] / total_us, flop_share=v['flops'] / total_flops if total_flops else 0.0,
                   gflop=v['flops'] / 1e9)
        for kind, v in sorted(kinds.items(), key=lambda kv: -kv[1]['us'])}
    top_ops = [dict(name=o['name'], kind=o['kind'], time_share=o['us'] / total_us, calls=o['calls'])
               for o in sorted(ops.values(), key=lambda o: -o['us'])[:top]]
    return dict(wall_s=wall, gflop=total_flops / 1e9, kinds=out_kinds, top_ops=top_ops)
