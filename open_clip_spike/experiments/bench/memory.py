"""Peak memory of a training step, each measured in a fresh subprocess."""
import gc
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

import torch


from .config import ANN, ANN_TB, BenchConfig, _split_impl, _variants
from .models import build_bench_model
from .timing import _sync


def _status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{key} not found in /proc/self/status')


def probe_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build the model, run one warm-up step, return the peak extra memory of the next step.

    Needs a process started with a fixed mmap threshold (see the module docstring); then models measured
    before in the same process do not count: their freed buffers have left the resident set.
    """
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    torch.set_flush_denormal(bool(spec.get('flush_denormal', True)))
    device = spec.get('device', 'cpu')
    torch.manual_seed(0)  # the same weights for every spec, so gradients can be compared across specs
    impl, cast = _split_impl(spec['impl'])
    model, make_input, loss_fn = build_bench_model(
        spec['model'], spec['T'], impl, spec['batch_size'], spec.get('quick', False), device,
        spec.get('model_kwargs'))
    if spec.get('grad_checkpointing'):
        model.set_grad_checkpointing(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    batch = make_input(spec['batch_size'])

    def step():
        opt.zero_grad(set_to_none=False)  # gradients and optimizer state exist before the measured step
        with cast(device):
            loss = loss_fn(model(*batch))
        loss.backward()
        opt.step()
        _sync(device)

    step()
    gc.collect()
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _status_bytes('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current resident set
        step()
        peak = _status_bytes('VmHWM') - base
    grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    result = dict(peak_bytes=int(max(peak, 0)), grad_norm=float(torch.stack(grads).norm()))
    del model, opt, batch
    gc.collect()
    return result


def peak_train_memory_many(specs: List[Dict[str, Any]], timeout: float = 1800) -> List[Dict[str, Any]]:
    """Peak extra memory of one training step for each spec, measured one after another in ONE subprocess.

    A spec is ``dict(model, T, impl, batch_size, grad_checkpointing=False, quick=False, threads=2,
    device='cpu', model_kwargs=None)``. Each result is ``dict(peak_bytes, grad_norm)``: the peak above the
    memory held before the step, and the gradient norm (equal with and without checkpointing).
    """
    if not any(s.get('device', 'cpu').startswith('cuda') for s in specs) and not os.path.exists('/proc/self/clear_refs'):
        raise RuntimeError('CPU peak memory needs Linux /proc (VmHWM and clear_refs); not available here')
    # see the module docstring; the commands' allocator tuning (no mmap) would hide freed memory from the count
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', TIMM_SPIKE_TUNE_ALLOCATOR='0')
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'result.json')
        cmd = [sys.executable, '-m', 'open_clip_spike.cli.bench', '--probe-memory', json.dumps(specs), '--out', out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f'memory probe failed ({proc.returncode}): {proc.stderr[-2000:]}')
        with open(out) as f:
            return json.load(f)


def peak_train_memory(
        model: str,
        T: int,
        impl: str,
        batch_size: int,
        grad_checkpointing: bool = False,
        quick: bool = False,
        threads: Optional[int] = 2,
        device: str = 'cpu',
        model_kwargs: Optional[Dict[str, Any]] = None,
        timeout: float = 900,
) -> Dict[str, Any]:
    """Peak extra memory (bytes) of one training step of a benchmark model, in a fresh subprocess.

    Args:
        model: One of ``MODELS``.
        T: Time steps.
        impl: Neuron implementation, or 'ann'.
        batch_size: Batch of the step.
        grad_checkpointing: Enable the model's activation checkpointing.
        quick: Build the tiny version.
        threads: torch threads in the subprocess.
        device: 'cpu' or 'cuda'.
        model_kwargs: Keyword overrides for the model.
        timeout: Seconds before the subprocess is abandoned.

    Returns:
        dict(peak_bytes, grad_norm).
    """
    spec = dict(model=model, T=T, impl=impl, batch_size=batch_size, grad_checkpointing=grad_checkpointing,
                quick=quick, threads=threads, device=device, model_kwargs=model_kwargs)
    return peak_train_memory_many([spec], timeout=timeout)[0]


def bench_memory(name: str, cfg: BenchConfig) -> List[Dict[str, Any]]:
    """Peak training memory of every variant of one model (one subprocess for all of them)."""
    base = dict(model=name, batch_size=cfg.batch_size, quick=cfg.quick, threads=cfg.threads, device=cfg.device,
                model_kwargs=cfg.model_kwargs.get(name), flush_denormal=cfg.flush_denormal)
    variants = _variants(cfg)
    specs = [dict(base, T=1, impl=ANN, batch_size=T * cfg.batch_size) if impl == ANN_TB else dict(base, T=T, impl=impl)
             for T, impl in variants]
    ck_impls = list(cfg.impls) if cfg.checkpoint_T in cfg.T_values else []
    specs += [dict(base, T=cfg.checkpoint_T, impl=impl, grad_checkpointing=True) for impl in ck_impls]
    results = peak_train_memory_many(specs)
    rows = [dict(model=name, T=T, impl=impl, peak_train_mb=r['peak_bytes'] / 2 ** 20)
            for (T, impl), r in zip(variants, results)]
    for impl, r in zip(ck_impls, results[len(variants):]):
        plain = next(row for row in rows if row['T'] == cfg.checkpoint_T and row['impl'] == impl)
        plain['peak_train_ckpt_mb'] = r['peak_bytes'] / 2 ** 20
        plain['ckpt_memory_cut'] = (1 - plain['peak_train_ckpt_mb'] / plain['peak_train_mb']
                                    if plain['peak_train_mb'] else None)
    return rows
