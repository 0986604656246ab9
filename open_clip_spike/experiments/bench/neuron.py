"""The fused LIF on its own: its one-time compile cost (fresh processes) and one layer's speed."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

import torch

from timm_spike.layers import lif_impl
from timm_spike.layers.fused_lif import FusedLIFParams, fused_compile_enabled

from .config import BenchConfig, _split_impl
from .timing import _timed_rounds


def probe_compile(spec: Dict[str, Any]) -> Dict[str, Any]:
    """In a fresh process: the first-call cost of the fused LIF kernels per T, against the steady call.

    ``spec``: dict(T_values, params=[FusedLIFParams as dicts], numel, repeats, threads). For each T and each set
    of neuron constants, the first training call (forward + backward: compiles two kernels) and the first
    inference call (one kernel) are timed against the median of ``repeats`` later calls.
    """
    from timm_spike.layers.fused_lif import lif_multi_step_fused
    t_import = time.perf_counter()
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    params = [FusedLIFParams(**p) for p in spec['params']] or [FusedLIFParams()]
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in spec['T_values']:
        x = torch.randn(T, spec['numel'], generator=g) * 1.5 + 0.5
        for p in params:
            def train():
                xi = x.clone().requires_grad_()
                lif_multi_step_fused(xi, p).sum().backward()

            def infer():
                with torch.no_grad():
                    lif_multi_step_fused(x, p)
            firsts = {}
            for key, fn in (('train', train), ('infer', infer)):
                t0 = time.perf_counter()
                fn()
                firsts[key] = time.perf_counter() - t0
            steady = {}
            for key, fn in (('train', train), ('infer', infer)):
                times = []
                for _ in range(max(1, spec.get('repeats', 3))):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                steady[key] = statistics.median(times)
            rows.append(dict(T=T, params=asdict(p),
                             train_first_s=firsts['train'], train_steady_s=steady['train'],
                             infer_first_s=firsts['infer'], infer_steady_s=steady['infer'],
                             compile_s=max(0.0, firsts['train'] - steady['train'])
                             + max(0.0, firsts['infer'] - steady['infer'])))
    return dict(rows=rows, total_s=time.perf_counter() - t_import, compiled=fused_compile_enabled(),
                total_compile_s=sum(r['compile_s'] for r in rows))


def measure_compile_cost(
        T_values: Sequence[int],
        params: Sequence[FusedLIFParams] = (),
        numel: int = 1 << 16,
        threads: Optional[int] = 2,
        repeats: int = 3,
        timeout: float = 1800,
) -> Dict[str, Any]:
    """One-time compile cost of the fused LIF: two fresh processes sharing a new, empty inductor cache.

    The first finds the cache empty (cold: what a machine pays once), the second finds it filled by the first
    (warm: what every new process pays for tracing and loading the compiled kernels).

    Returns:
        dict(cold=probe_compile's result, warm=probe_compile's result).
    """
    spec = dict(T_values=list(T_values), params=[asdict(p) for p in params], numel=numel, threads=threads,
                repeats=repeats)
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        env.pop('TORCHINDUCTOR_FORCE_DISABLE_CACHES', None)
        for phase in ('cold', 'warm'):
            result = os.path.join(cache, f'{phase}.json')
            cmd = [sys.executable, '-m', 'open_clip_spike.cli.bench', '--probe-compile', json.dumps(spec),
                   '--out', result]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not os.path.exists(result):
                raise RuntimeError(f'compile probe failed ({proc.returncode}): {proc.stderr[-2000:]}')
            with open(result) as f:
                out[phase] = json.load(f)
            out[phase]['process_s'] = time.perf_counter() - t0
    return out


def bench_neuron(cfg: BenchConfig, T: int = 4, numel: Optional[int] = None) -> List[Dict[str, Any]]:
    """ns per element of one LIF layer alone, forward+backward and forward only, per implementation.

    The default size is one SpikeCLIP MLP hidden layer at batch 32: 32 x 1536 x 64 neurons (quick: 1/64 of it).
    """
    from timm_spike.layers import create_lif
    numel = numel or (32 * 1536 * 64 // (64 if cfg.quick else 1))
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(T, numel, generator=g) * 1.5 + 0.5).to(cfg.device).requires_grad_()
    grad = torch.ones_like(x)
    lifs = {impl: create_lif() for impl in dict.fromkeys(_split_impl(i)[0] for i in cfg.impls)}

    def fwd_bwd(impl, lif):
        def call():
            x.grad = None
            with lif_impl(impl):
                lif(x).backward(grad)
        return call

    def fwd(impl, lif):
        def call():
            with torch.no_grad(), lif_impl(impl):
                lif(x)
        return call

    train = _timed_rounds({k: fwd_bwd(k, v) for k, v in lifs.items()}, cfg.repeats, cfg.warmup, cfg.device)
    infer = _timed_rounds({k: fwd(k, v) for k, v in lifs.items()}, cfg.repeats, cfg.warmup, cfg.device)
    n = T * numel
    return [dict(impl=k, T=T, numel=numel, fwd_bwd_ns_per_elem=train[k]['median_s'] / n * 1e9,
                 fwd_ns_per_elem=infer[k]['median_s'] / n * 1e9) for k in lifs]
