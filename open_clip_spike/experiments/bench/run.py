"""The driver: every variant of a model timed together (in one process or one process per T), then the suite."""
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict

import torch

from timm_spike.layers import get_lif_impl, set_lif_impl
from timm_spike.layers.fused_lif import FusedLIFParams, fused_params_from_node

from .config import ANN, ANN_TB, BenchConfig, _batch_of, _jsonable, _split_impl, _variants
from .flops import count_flops, measure_gemm_peak
from .memory import bench_memory
from .models import _Variants, _make_optimizer, build_bench_model
from .neuron import bench_neuron, measure_compile_cost
from .profile import profile_step
from .timing import LoadMonitor, _timed_rounds, machine_info, median_interval

_logger = logging.getLogger(__name__)


def bench_model(name: str, cfg: BenchConfig) -> Dict[str, Any]:
    """Time training and inference of every (T, impl) variant of one model, interleaved.

    Returns:
        dict(rows=one dict per variant, profile=the profile of one step per kind (or None),
        lif_params=the fused-kernel constants of the model's neurons).
    """
    device = cfg.device
    model, make_input, loss_fn = build_bench_model(
        name, max(cfg.T_values), 'spikingjelly', cfg.batch_size, cfg.quick, device, cfg.model_kwargs.get(name))
    variants = _Variants(model)
    lif_params = sorted({p for _, m in variants.neurons if (p := fused_params_from_node(m)) is not None},
                        key=repr)
    opt = _make_optimizer(cfg.optimizer, model.parameters())
    keys = _variants(cfg)
    inputs: Dict[int, Any] = {}

    def inputs_of(b: int):
        if b not in inputs:
            inputs[b] = make_input(b)
        return inputs[b]

    def train_call(T, impl):
        base, cast = _split_impl(impl)
        x = inputs_of(_batch_of(T, impl, cfg.batch_size))

        def call():
            variants.set(T, base)
            model.train()
            opt.zero_grad(set_to_none=True)
            with cast(device):
                loss = loss_fn(model(*x))
            loss.backward()
            opt.step()
        return call

    def infer_call(T, impl, batch):
        base, cast = _split_impl(impl)
        x = inputs_of(_batch_of(T, impl, batch))

        def call():
            variants.set(T, base)
            model.eval()
            with torch.no_grad(), cast(device):
                model(*x)
        return call

    train = _timed_rounds({k: train_call(*k) for k in keys}, cfg.repeats, cfg.warmup, device)
    infer = _timed_rounds({k: infer_call(*k, cfg.batch_size) for k in keys}, cfg.repeats, cfg.warmup, device)
    lat = _timed_rounds({k: infer_call(*k, 1) for k in keys}, cfg.repeats, cfg.warmup, device)

    flops = {}
    if cfg.flops:  # once per variant, after the timing (the counter runs every op eagerly)
        for k in keys:
            flops[k] = dict(train=count_flops(train_call(*k))[0], infer=count_flops(infer_call(*k, cfg.batch_size))[0])

    profile = None
    if cfg.profile:
        pT = cfg.profile_T if cfg.profile_T in cfg.T_values else max(cfg.T_values)
        pk = [(1, ANN), (pT, cfg.impls[0])]
        profile = {f'{impl}@T={T}': dict(T=T, impl=impl,
                                         train=profile_step(train_call(T, impl), cfg.device),
                                         infer=profile_step(infer_call(T, impl, cfg.batch_size), cfg.device))
                   for T, impl in pk}

    ann_train, ann_infer, ann_lat = train[(1, ANN)]['median_s'], infer[(1, ANN)]['median_s'], lat[(1, ANN)]['median_s']
    rows = []
    for T, impl in keys:
        k = (T, impl)
        t, i, l = train[k]['median_s'], infer[k]['median_s'], lat[k]['median_s']
        fb = _batch_of(T, impl, cfg.batch_size)
        row = dict(
            model=name, T=T, impl=impl, batch_size=fb,
            train_s=t, train_img_s=fb / t, infer_s=i, infer_img_s=fb / i, latency_b1_ms=l * 1e3,
            first_train_call_s=train[k]['first_s'], first_infer_call_s=infer[k]['first_s'],
            first_latency_call_s=lat[k]['first_s'],
            train_times_s=train[k]['times'], infer_times_s=infer[k]['times'], latency_times_s=lat[k]['times'],
            train_faults_mb=train[k]['median_faults_mb'], infer_faults_mb=infer[k]['median_faults_mb'],
        )
        if impl != ANN_TB:
            row.update(train_overhead=t / (T * ann_train), infer_overhead=i / (T * ann_infer),
                       latency_overhead=l / (T * ann_lat),
                       ann_train_s=ann_train, ann_infer_s=ann_infer, ann_latency_s=ann_lat)
            fair = (1, ANN) if T == 1 else (T, ANN_TB)
            if fair in train:
                row.update(train_overhead_fair=t / train[fair]['median_s'],
                           infer_overhead_fair=i / infer[fair]['median_s'],
                           latency_overhead_fair=l / lat[fair]['median_s'])
            # The same overheads round by round: each call over its baseline timed in the same round, a few
            # seconds apart, so a slow patch of the machine cancels in the ratio; median and a distribution-free
            # interval of the median (the spread a re-run would show).
            for kind, timed in (('train', train), ('infer', infer), ('latency', lat)):
                for suffix, base, scale in (('', (1, ANN), T), ('_fair', fair, 1)):
                    if base in timed:
                        ratios = [s / (scale * b) for s, b in zip(timed[k]['times'], timed[base]['times'])]
                        row[f'{kind}_overhead{suffix}_rounds'] = ratios
                        row[f'{kind}_overhead{suffix}_paired'] = statistics.median(ratios)
                        row[f'{kind}_overhead{suffix}_ci'] = list(median_interval(ratios))
        if k in flops:
            row.update(train_gflop=flops[k]['train'] / 1e9, infer_gflop=flops[k]['infer'] / 1e9,
                       train_gflops=flops[k]['train'] / t / 1e9, infer_gflops=flops[k]['infer'] / i / 1e9)
        rows.append(row)
    del model, opt, variants, inputs
    gc.collect()
    return dict(rows=rows, profile=profile, lif_params=lif_params)


def probe_timing(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``bench_model`` in this (fresh) process: ``spec`` = dict(model, cfg=BenchConfig as a dict)."""
    cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec['cfg'].items()})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(cfg.flush_denormal)
    result = bench_model(spec['model'], cfg)
    result['lif_params'] = [asdict(p) for p in result['lif_params']]
    return result


def bench_model_isolated(name: str, cfg: BenchConfig, timeout: float = 7200) -> Dict[str, Any]:
    """``bench_model`` with each T in its own fresh subprocess (see ``BenchConfig.isolate_T``), merged.

    Each process times the ANN at batch B, the ANN at batch T x B and the SNN variants at that T, interleaved; the
    overheads of its rows are against the ANN timed there. The ANN row at batch B of the first process is kept.
    """
    from dataclasses import replace
    profile_T = cfg.profile_T if cfg.profile_T in cfg.T_values else max(cfg.T_values)
    rows, profile, lif_params = [], None, set()
    for T in cfg.T_values:
        sub = replace(cfg, T_values=(T,), profile=cfg.profile and T == profile_T, profile_T=T)
        spec = dict(model=name, cfg=_jsonable(asdict(sub)))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'result.json')
            cmd = [sys.executable, '-m', 'open_clip_spike.cli.bench', '--probe-timing', json.dumps(spec), '--out', out]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not os.path.exists(out):
                if 'ImportError' in proc.stderr or 'ModuleNotFoundError' in proc.stderr:
                    raise ImportError(proc.stderr.strip().splitlines()[-1])
                raise RuntimeError(f'timing subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}')
            with open(out) as f:
                result = json.load(f)
        rows += [r for r in result['rows'] if not (r['impl'] == ANN and rows)]
        profile = result['profile'] or profile
        lif_params.update(FusedLIFParams(**p) for p in result['lif_params'])
    return dict(rows=rows, profile=profile, lif_params=sorted(lif_params, key=repr))


def run_bench(cfg: BenchConfig) -> Dict[str, Any]:
    """Run the suite; return a JSON-able dict with the machine, load, GEMM peak and one row per (model, T, impl)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    flush_before = torch.set_flush_denormal(cfg.flush_denormal)
    if cfg.device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but CUDA is not available")
    monitor, wall0 = LoadMonitor(), time.time()
    rows, skipped, profiles, lif_params = [], {}, {}, set()
    impl_before = get_lif_impl()  # the variants switch it; the caller's choice is restored at the end
    gemm = dict(start=measure_gemm_peak(cfg.device, cfg.gemm_size, cfg.gemm_repeats)) if cfg.gemm_size else {}
    neuron_rows = bench_neuron(cfg)
    for name in cfg.models:
        try:
            isolate = cfg.isolate_T and len(cfg.T_values) > 1
            result = bench_model_isolated(name, cfg) if isolate else bench_model(name, cfg)
        except ImportError as e:  # a tower whose code is not available: say so, measure the others
            skipped[name] = f'{type(e).__name__}: {e}'
            _logger.warning('skipping %s: %s', name, skipped[name])
            continue
        timing = result['rows']
        lif_params.update(result['lif_params'])
        if result['profile']:
            profiles[name] = result['profile']
        if cfg.memory:
            mem = {(r['T'], r['impl']): r for r in bench_memory(name, cfg)}
            ann_mem = mem[(1, ANN)]['peak_train_mb']
            ann_mem = ann_mem if ann_mem >= 1 else None  # below 1 MB the ratio says nothing
            for r in timing:
                m = mem[(r['T'], r['impl'])]
                r.update({k: v for k, v in m.items() if k not in r})
                r['memory_vs_ann'] = r['peak_train_mb'] / ann_mem if ann_mem else None
        rows.extend(timing)
        _logger.info('%s done', name)
    set_lif_impl(impl_before)
    if gemm:
        gemm['end'] = measure_gemm_peak(cfg.device, cfg.gemm_size, cfg.gemm_repeats)
        gemm['peak_gflops'] = statistics.median(gemm['start']['gflops'] + gemm['end']['gflops'])
        for r in rows:
            for kind in ('train', 'infer'):
                if r.get(f'{kind}_gflops') is not None:
                    r[f'{kind}_peak_fraction'] = r[f'{kind}_gflops'] / gemm['peak_gflops']
    wall = time.time() - wall0
    load = monitor.result()
    compile_cost = None
    if cfg.compile_cost and cfg.device == 'cpu' and any(_split_impl(i)[0] in ('fused', 'auto') for i in cfg.impls):
        # after the timed part and outside the load window: two fresh processes, cold then warm inductor cache
        compile_cost = measure_compile_cost(cfg.T_values[-1:] if cfg.quick else cfg.T_values,
                                            sorted(lif_params, key=repr), numel=1 << (12 if cfg.quick else 16),
                                            threads=cfg.threads)
    machine = machine_info(threads, cfg.device)
    machine['flush_denormal'] = cfg.flush_denormal and flush_before
    if cfg.flush_denormal:
        torch.set_flush_denormal(False)
    return dict(config=_jsonable(asdict(cfg)), machine=machine, load=load, wall_s=wall, gemm=gemm, rows=rows,
                neuron=neuron_rows, profile=profiles, compile=compile_cost, skipped=skipped)
