"""``spikeclip bench``: speed and memory of the spiking towers against the same network as an ANN.

For each model (``spikingformer_clip``, the SpikeCLIP text tower, ``SpikeCLIP-Spikingformer-4-384``) and each
T, it measures a training step (forward + backward + optimizer step), inference throughput and batch-1 latency,
and the peak memory of a training step, for each neuron implementation (fused, spikingjelly) and for the ANN of
equal shape (every spiking neuron replaced by an identity, eager, T=1). It reports the spiking overhead
``SNN time / (T x ANN time)`` and the memory growth with T.

Timing is interleaved (A, B, C, A, B, C, ...) in one process on one model whose T and neurons are switched
between calls, and summarised by medians, so a slow patch of the machine hits every variant alike. The run
records the machine, thread count, load average and how much CPU other processes used while it ran: on a
2-core machine a busy second core makes small-op SNN code 5-20x slower, and the report says so.

Peak CPU memory is the high-water mark of the process's resident set during one training step, measured in a
fresh subprocess with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so every tensor buffer is its
own mapping and freed memory leaves the resident set; this agrees with the torch profiler's allocation
timeline to within 1% and costs nothing during the step. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""
import contextlib
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm_spike.layers import StatelessLIFNode, get_lif_impl, lif_impl, set_lif_impl
from timm_spike.layers.fused_lif import fused_compile_enabled

__all__ = ['BenchConfig', 'run_bench', 'build_bench_model', 'peak_train_memory', 'peak_train_memory_many',
           'to_markdown']

_logger = logging.getLogger(__name__)

MODELS = ('spikingformer_clip', 'text', 'SpikeCLIP-Spikingformer-4-384')
ANN = 'ann'  # the variant with every neuron replaced by an identity, run at T=1
BF16 = '+bf16'  # impl suffix: the variant runs under bf16 autocast (e.g. 'fused+bf16'); the ANN stays fp32
IMPLS = ('fused', 'spikingjelly', 'auto')


def _split_impl(impl: str) -> Tuple[str, Any]:
    """'fused+bf16' -> ('fused', bf16 autocast context factory); 'fused' -> ('fused', nullcontext)."""
    if impl.endswith(BF16):
        return impl[:-len(BF16)], lambda device: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return impl, lambda device: contextlib.nullcontext()

# --quick: seconds-long smoke run with tiny versions of the same models.
QUICK_KWARGS = {
    'spikingformer_clip': dict(embed_dim=32, depth=1, num_heads=4),
    'text': dict(width=16, hidden_dim=64, vocab_size=1000),
    'SpikeCLIP-Spikingformer-4-384': None,  # quick mode uses SpikeCLIP-Tiny instead
}


@dataclass
class BenchConfig:
    """What to measure.

    Args:
        models: Models to run (see ``MODELS``).
        T_values: Time steps to measure the SNN at.
        impls: Neuron implementations ('fused', 'spikingjelly', 'auto'); with a '+bf16' suffix (e.g.
            'fused+bf16') the variant runs under bf16 autocast, its overhead still against the fp32 ANN.
        batch_size: Batch of the training step and of the throughput measurement.
        repeats: Timed calls per variant (interleaved); the median is reported.
        warmup: Untimed calls per variant first (the first call of a fused variant compiles it).
        threads: torch threads (None: leave torch's setting).
        memory: Measure the peak training memory (one subprocess per variant on CPU).
        checkpoint_T: Also measure the peak with activation checkpointing at this T (0: skip).
        device: 'cpu' or 'cuda'.
        quick: Tiny models, small batch, T in (1, 2): a smoke run of a few seconds per model.
        model_kwargs: Per-model keyword overrides for the builders.
        flush_denormal: Treat denormal floats as zero (``torch.set_flush_denormal``). Randomly initialised
            spiking towers produce denormals on the CPU, which made a tiny SpikeCLIP's batch-1 inference
            12x slower here (569 ms vs 46 ms); trained weights may too. Recorded in the report.
    """
    models: Sequence[str] = MODELS
    T_values: Sequence[int] = (1, 2, 4, 8)
    impls: Sequence[str] = ('fused', 'spikingjelly')
    batch_size: int = 32
    repeats: int = 7
    warmup: int = 2
    threads: Optional[int] = 2
    memory: bool = True
    checkpoint_T: int = 8
    device: str = 'cpu'
    quick: bool = False
    model_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    flush_denormal: bool = True

    @classmethod
    def quick_config(cls, **overrides: Any) -> 'BenchConfig':
        cfg = dict(T_values=(1, 2), batch_size=4, repeats=3, warmup=1, checkpoint_T=2, quick=True)
        cfg.update(overrides)
        return cls(**cfg)


# ---------------------------------------------------------------------------------------------- models


def _model_kwargs(name: str, quick: bool, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    kw = dict(QUICK_KWARGS.get(name) or {}) if quick else {}
    kw.update(extra or {})
    return kw


def build_bench_model(
        name: str,
        T: int,
        impl: str,
        batch_size: int,
        quick: bool = False,
        device: str = 'cpu',
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Callable[[int], Any], Callable[[Any], torch.Tensor]]:
    """Build a benchmark model with its input maker and training loss.

    Args:
        name: One of ``MODELS``.
        T: Time steps.
        impl: Neuron implementation, or 'ann' for identity neurons (use T=1 for the ANN baseline).
        batch_size: Unused here; kept so a subprocess spec is one dict.
        quick: Build the tiny version.
        device: Where to build it.
        model_kwargs: Keyword overrides for the model constructor.

    Returns:
        (model, make_input(batch) -> args tuple, loss(output) -> scalar).
    """
    # the neuron implementation is a process-wide switch (timm_spike.layers.set_lif_impl), set per call
    if impl != ANN:
        set_lif_impl(_split_impl(impl)[0])
    kw = _model_kwargs(name, quick, model_kwargs)
    g = torch.Generator().manual_seed(0)
    if name == 'spikingformer_clip':
        import timm
        import timm_spike  # noqa: F401
        model = timm.create_model('spikingformer_clip', T=T, **kw)
        size = model.img_size

        def make_input(b):
            return (torch.randn(b, 3, *size, generator=g).to(device),)

        def loss_fn(out):
            return out.float().square().mean()
    elif name == 'text':
        from open_clip_spike.text import SpikingTextMLP
        model = SpikingTextMLP(T=T, **kw)
        vocab, ctx = model.vocab_size, model.context_length

        def make_input(b):
            return (torch.randint(1, vocab, (b, ctx), generator=g).to(device),)

        def loss_fn(out):
            return out.float().square().mean()
    elif name in MODELS or name.startswith('SpikeCLIP'):
        import open_clip
        import open_clip_spike  # noqa: F401  (registers the configs)
        arch = 'SpikeCLIP-Tiny' if quick and name == 'SpikeCLIP-Spikingformer-4-384' else name
        model = open_clip.create_model(arch, T=T, output_dict=True, **kw)
        clip_loss = open_clip.ClipLoss()
        size = model.visual.image_size if hasattr(model.visual, 'image_size') else (32, 32)
        size = (size, size) if isinstance(size, int) else tuple(size)
        ctx, vocab = model.context_length, model.vocab_size

        def make_input(b):
            return (torch.randn(b, 3, *size, generator=g).to(device),
                    torch.randint(1, vocab, (b, ctx), generator=g).to(device))

        def loss_fn(out):
            return clip_loss(out['image_features'], out['text_features'], out['logit_scale'])
    else:
        raise ValueError(f'Unknown benchmark model {name!r}; choose from {list(MODELS)}')
    if impl == ANN:
        from timm_spike.energy import ann_equivalent  # the one definition of "the ANN of equal shape"
        model = ann_equivalent(model)
    return model.to(device), make_input, loss_fn


class _Variants:
    """One model whose T and neurons are switched between calls, so every variant uses the same weights.

    The ANN variant swaps in identities where ``timm_spike.energy.ann_equivalent`` would, in place (a copy per
    variant would hold another set of weights, gradients and optimizer state).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, StatelessLIFNode)]
        self.t_owners = [m for m in model.modules() if isinstance(vars(m).get('T'), int)]
        self.current = None

    def set(self, T: int, impl: str):
        if self.current == (T, impl):
            return
        for m in self.t_owners:
            m.T = T
        for name, lif in self.neurons:
            parent_name, _, child = name.rpartition('.')
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if impl == ANN:
                setattr(parent, child, nn.Identity())
            else:
                setattr(parent, child, lif)
        if impl != ANN:
            set_lif_impl(impl)
        self.current = (T, impl)


# --------------------------------------------------------------------------------------------- timing


def _sync(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _cpu_busy_jiffies() -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where unavailable."""
    try:
        with open('/proc/stat') as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMonitor:
    """What else used the machine while a measurement ran: created at the start, ``result()`` at the end.

    The CPU time that other processes took during the run (from /proc/stat, minus this process and its waited-for
    children) decides ``under_load`` (over 5% of the CPUs). The 1-minute load average at the start is recorded
    but only decides where /proc/stat is unavailable: right after another run it still shows that run's tail.
    """

    def __init__(self):
        self.loadavg_before = os.getloadavg() if hasattr(os, 'getloadavg') else None
        self._busy0, self._own0, self._wall0 = _cpu_busy_jiffies(), _own_cpu_seconds(), time.time()

    def result(self) -> Dict[str, Any]:
        wall = time.time() - self._wall0
        busy1, own1 = _cpu_busy_jiffies(), _own_cpu_seconds()
        load = dict(loadavg_before=self.loadavg_before,
                    loadavg_after=os.getloadavg() if hasattr(os, 'getloadavg') else None)
        if self._busy0 and busy1:
            others = max(0.0, (busy1[0] - self._busy0[0]) / os.sysconf('SC_CLK_TCK') - (own1 - self._own0))
            load['other_processes_cpu_share'] = others / (max(wall, 1e-9) * (os.cpu_count() or 1))
        share = load.get('other_processes_cpu_share')
        if share is not None:
            load['under_load'] = share > 0.05
        else:
            load['under_load'] = bool(self.loadavg_before and self.loadavg_before[0] > 0.5)
        return load


def machine_info(threads: int, device: str) -> Dict[str, Any]:
    import spikingjelly
    import timm
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), cpu)
    except OSError:
        pass
    info = dict(
        cpu=cpu, cpu_count=os.cpu_count(), torch_threads=threads, platform=platform.platform(),
        python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
        spikingjelly=getattr(spikingjelly, '__version__', 'unknown'), device=device,
        fused_compiled=fused_compile_enabled(),
    )
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def _timed_rounds(calls: Dict[str, Callable[[], None]], repeats: int, warmup: int, device: str) -> Dict[str, Dict]:
    """Warm each call up, then time them interleaved; return first-call time and the median per key.

    The calls come smallest first (the ANN, then T ascending). A call right after a much bigger one is slower
    (measured on the 2-core CPU: a SpikeCLIP ANN step right after a T=8 step took 2.33 s against 2.06 s after
    another ANN step; the allocator hands freshly mapped memory back), so each round starts with one untimed
    call of the first variant: no timed call follows a bigger variant, which would bias the ANN baseline up and
    every overhead down.
    """
    out = {k: dict(first_s=None, times=[]) for k in calls}
    for k, fn in calls.items():
        for i in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i == 0:
                out[k]['first_s'] = time.perf_counter() - t0
    settle = next(iter(calls.values()))
    for _ in range(repeats):
        settle()
        _sync(device)
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[k]['times'].append(time.perf_counter() - t0)
    for v in out.values():
        v['median_s'] = statistics.median(v['times'])
    return out


def _variants(cfg: BenchConfig) -> List[Tuple[int, str]]:
    return [(1, ANN)] + [(T, impl) for T in cfg.T_values for impl in cfg.impls]


def bench_model(name: str, cfg: BenchConfig) -> List[Dict[str, Any]]:
    """Time training and inference of every (T, impl) variant of one model, interleaved."""
    device = cfg.device
    model, make_input, loss_fn = build_bench_model(
        name, max(cfg.T_values), 'spikingjelly', cfg.batch_size, cfg.quick, device, cfg.model_kwargs.get(name))
    variants = _Variants(model)
    # lr=0: every variant runs the same full optimizer step on the same, unchanging weights.
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    batch, single = make_input(cfg.batch_size), make_input(1)

    def train_call(T, impl):
        base, cast = _split_impl(impl)

        def call():
            variants.set(T, base)
            model.train()
            opt.zero_grad(set_to_none=True)
            with cast(device):
                loss = loss_fn(model(*batch))
            loss.backward()
            opt.step()
        return call

    def infer_call(T, impl, inputs):
        base, cast = _split_impl(impl)

        def call():
            variants.set(T, base)
            model.eval()
            with torch.no_grad(), cast(device):
                model(*inputs)
        return call

    keys = _variants(cfg)
    train = _timed_rounds({k: train_call(*k) for k in keys}, cfg.repeats, cfg.warmup, device)
    infer = _timed_rounds({k: infer_call(*k, batch) for k in keys}, cfg.repeats, cfg.warmup, device)
    lat = _timed_rounds({k: infer_call(*k, single) for k in keys}, cfg.repeats, cfg.warmup, device)
    ann_train, ann_infer, ann_lat = train[(1, ANN)]['median_s'], infer[(1, ANN)]['median_s'], lat[(1, ANN)]['median_s']
    rows = []
    for T, impl in keys:
        k = (T, impl)
        t, i, l = train[k]['median_s'], infer[k]['median_s'], lat[k]['median_s']
        rows.append(dict(
            model=name, T=T, impl=impl, batch_size=cfg.batch_size,
            train_s=t, train_img_s=cfg.batch_size / t, train_overhead=t / (T * ann_train),
            infer_s=i, infer_img_s=cfg.batch_size / i, infer_overhead=i / (T * ann_infer),
            latency_b1_ms=l * 1e3, latency_overhead=l / (T * ann_lat),
            first_train_call_s=train[k]['first_s'], first_infer_call_s=infer[k]['first_s'],
        ))
    del model, opt, variants
    gc.collect()
    return rows


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


# --------------------------------------------------------------------------------------------- memory


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
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')  # see the module docstring
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
    specs = [dict(base, T=T, impl=impl) for T, impl in variants]
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


# -------------------------------------------------------------------------------------------- the suite


def run_bench(cfg: BenchConfig) -> Dict[str, Any]:
    """Run the suite; return a JSON-able dict with the machine, load and one row per (model, T, impl)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    flush_before = torch.set_flush_denormal(cfg.flush_denormal)
    if cfg.device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but CUDA is not available")
    monitor, wall0 = LoadMonitor(), time.time()
    rows, skipped = [], {}
    impl_before = get_lif_impl()  # the variants switch it; the caller's choice is restored at the end
    neuron_rows = bench_neuron(cfg)
    for name in cfg.models:
        try:
            timing = bench_model(name, cfg)
        except ImportError as e:  # a tower whose code is not available: say so, measure the others
            skipped[name] = f'{type(e).__name__}: {e}'
            _logger.warning('skipping %s: %s', name, skipped[name])
            continue
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
    wall = time.time() - wall0
    load = monitor.result()
    machine = machine_info(threads, cfg.device)
    machine['flush_denormal'] = cfg.flush_denormal and flush_before
    if cfg.flush_denormal:
        torch.set_flush_denormal(False)
    return dict(config=_jsonable(asdict(cfg)), machine=machine, load=load, wall_s=wall, rows=rows,
                neuron=neuron_rows, skipped=skipped)


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def fmt_value(v, spec='.2f'):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def to_markdown(result: Dict[str, Any]) -> str:
    """The report as Markdown: machine and load, then one table per model."""
    m, load, cfg = result['machine'], result['load'], result['config']
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m.get('gpu', m['device'])}; torch {m['torch']}, "
        f"{m['torch_threads']} threads, spikingjelly {m['spikingjelly']}; fused LIF compiled: {m['fused_compiled']}; "
        f"denormals flushed to zero: {m.get('flush_denormal')}.",
        f"Batch {cfg['batch_size']}, median of {cfg['repeats']} interleaved calls; "
        f"load average before {fmt_load(load.get('loadavg_before'))}, after {fmt_load(load.get('loadavg_after'))}; "
        f"other processes used {fmt_value(100 * load['other_processes_cpu_share'] if load.get('other_processes_cpu_share') is not None else None, '.0f')}% of the CPUs.",
    ]
    if load.get('under_load'):
        lines.append('')
        lines.append('**WARNING: measured under load (other processes were using the CPUs); SNN timings are '
                     'unreliable. Re-run on an idle machine.**')
    if cfg.get('quick'):
        lines.append('')
        lines.append('(--quick smoke run: tiny models, not representative figures.)')
    if result.get('neuron'):
        n0 = result['neuron'][0]
        lines += ['', f"### one LIF layer ({n0['numel']:,} neurons, T={n0['T']})", '',
                  '| LIF | forward+backward ns/element | forward ns/element |', '|---|---|---|']
        lines += [f"| {r['impl']} | {r['fwd_bwd_ns_per_elem']:.2f} | {r['fwd_ns_per_elem']:.2f} |"
                  for r in result['neuron']]
    for name in dict.fromkeys(r['model'] for r in result['rows']):
        rows = [r for r in result['rows'] if r['model'] == name]
        lines += ['', f'### {name}', '',
                  '| variant | T | train img/s | train overhead | infer img/s | infer overhead | latency b1 (ms) '
                  '| peak train MB | memory vs ANN | ckpt MB (cut) |',
                  '|---|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            base = _split_impl(r['impl'])[0]
            variant = 'ANN (identity neurons)' if r['impl'] == ANN else \
                f"SNN, {base} LIF{', bf16 autocast' if base != r['impl'] else ''}"
            ck = (f"{fmt_value(r['peak_train_ckpt_mb'], '.0f')} ({100 * r['ckpt_memory_cut']:.0f}%)"
                  if r.get('ckpt_memory_cut') is not None else '-')
            lines.append(
                f"| {variant} | {r['T']} | {fmt_value(r['train_img_s'], '.1f')} | {fmt_value(r['train_overhead'])} "
                f"| {fmt_value(r['infer_img_s'], '.1f')} | {fmt_value(r['infer_overhead'])} | {fmt_value(r['latency_b1_ms'], '.1f')} "
                f"| {fmt_value(r.get('peak_train_mb'), '.0f')} | {fmt_value(r.get('memory_vs_ann'))} | {ck} |")
        fused_first = [max(0.0, r['first_train_call_s'] - r['train_s']) for r in rows
                       if _split_impl(r['impl'])[0] in ('fused', 'auto')]
        if fused_first:
            lines.append('')
            lines.append(f'First-call extra time of the fused variants (compilation, paid once per process and '
                         f'shape; cached on disk): up to {max(fused_first):.1f} s.')
    for name, why in result.get('skipped', {}).items():
        lines += ['', f'### {name}', '', f'skipped: {why}']
    lines += ['', 'overhead = SNN time / (T x ANN time at T=1); memory = peak extra memory of a training step.']
    return '\n'.join(lines) + '\n'


def fmt_load(v):
    return '-' if not v else '/'.join(f'{x:.2f}' for x in v)

