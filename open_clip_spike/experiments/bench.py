"""``spikeclip bench``: speed and memory of the spiking towers against the same network as an ANN.

For each model (``spikingformer_clip``, the SpikeCLIP text tower, ``SpikeCLIP-Spikingformer-4-384``) and each
T, it measures a training step (forward + backward + optimizer step), inference throughput and batch-1 latency,
and the peak memory of a training step, for each neuron implementation (fused, spikingjelly) and for the ANN of
equal shape (every spiking neuron replaced by an identity, eager, T=1). It reports two spiking overheads:
``SNN time / (T x ANN time at batch B)`` and the fair one, ``SNN time / ANN time at batch T x B`` (the same
number of activations and one optimizer step, where T steps at batch B count T optimizer steps and T passes of
the first convolution that the SNN makes once), and the memory growth with T.

Speed is also shown against the machine's limit measured in the same run: the FLOPs of a training step and of
inference (``torch.utils.flop_counter.FlopCounterMode``, counted once per variant), the GFLOP/s achieved and its
fraction of a dense fp32 GEMM (an n x n x n ``torch.mm`` on the same threads, median of a few, at the start and
the end of the run). One step per model is profiled (``torch.profiler``) and its time and FLOPs split by kind of
operation (convolution, matmul, batch norm, the fused neuron, the optimizer, the rest), which says what keeps a
model below the GEMM rate. The one-time compile cost of the fused neuron is measured in fresh subprocesses with
an empty inductor cache (cold) and again with the cache that run filled (warm).

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
from torch.utils.flop_counter import FlopCounterMode

from timm_spike.layers import StatelessLIFNode, get_lif_impl, lif_impl, set_lif_impl
from timm_spike.layers.fused_lif import FusedLIFParams, fused_compile_enabled, fused_params_from_node

__all__ = ['BenchConfig', 'run_bench', 'median_interval', 'build_bench_model', 'bench_model', 'bench_model_isolated', 'peak_train_memory', 'peak_train_memory_many',
           'measure_gemm_peak', 'count_flops', 'profile_step', 'measure_compile_cost', 'probe_compile',
           'to_markdown']

_logger = logging.getLogger(__name__)

MODELS = ('spikingformer_clip', 'text', 'SpikeCLIP-Spikingformer-4-384')
ANN = 'ann'  # the variant with every neuron replaced by an identity, run at T=1
ANN_TB = 'ann-TxB'  # the same ANN at batch T x B: the fair baseline of the SNN at T (one optimizer step)
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
            spiking towers can produce denormals on the CPU (a tiny SpikeCLIP's batch-1 inference ran 12x
            slower with them); trained weights may too. Recorded in the report.
        fair_baseline: Also time the ANN at batch T x B for every T > 1 (the fair overhead's denominator).
        optimizer: 'adamw' or 'sgd' for the training step (lr 0: every variant keeps the same weights).
        flops: Count the FLOPs of every variant and report GFLOP/s against the measured GEMM peak.
        gemm_size: n of the n x n x n fp32 matmul that measures the machine's dense GEMM rate (0: skip).
        gemm_repeats: Timed matmuls per GEMM measurement (the median is used).
        profile: Profile one training step and one inference call per model (the ANN and the SNN at
            ``profile_T``) and split their time and FLOPs by kind of operation.
        profile_T: T of the profiled SNN (the largest measured T when not among them).
        compile_cost: Measure the fused neuron's one-time compile cost in fresh subprocesses, cold (empty
            inductor cache) and warm (the cache the cold run filled).
        isolate_T: Time each T in its own fresh process, next to the ANN at batch B and T x B timed in that same
            process, as a training run at that T runs. In one process for all T, the memory a bigger variant left
            behind let a smaller SNN step reuse its buffers without page faults: a T=4 step of spikingformer_clip
            (batch 32) touched no fresh memory after a T=8 step, but 1.1-2.8 GB (1-2.4 s of kernel time) per step
            in a process running T=4 alone, so the shared process gave lower overheads than an outside script.
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
    fair_baseline: bool = True
    optimizer: str = 'adamw'
    flops: bool = True
    gemm_size: int = 4096
    gemm_repeats: int = 5
    profile: bool = True
    profile_T: int = 4
    compile_cost: bool = True
    isolate_T: bool = True

    @classmethod
    def quick_config(cls, **overrides: Any) -> 'BenchConfig':
        cfg = dict(T_values=(1, 2), batch_size=4, repeats=3, warmup=1, checkpoint_T=2, quick=True,
                   gemm_size=1024, gemm_repeats=3)
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
        """Switch to ``impl`` at T ('ann' or 'ann-TxB': identity neurons, always one time step)."""
        if impl == ANN_TB:
            T, impl = 1, ANN
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
    import importlib.metadata

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
        spikingjelly=importlib.metadata.version('spikingjelly'), device=device,  # the package has no __version__
        fused_compiled=fused_compile_enabled(),
    )
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


_PAGE_MB = (os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096) / 2 ** 20


def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched for the first time); 0 where unknown."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def _timed_rounds(calls: Dict[str, Callable[[], None]], repeats: int, warmup: int, device: str) -> Dict[str, Dict]:
    """Warm each call up, then time them interleaved; return first-call time and the median per key.

    The calls come smallest first (the ANN, then T ascending). A call right after a much bigger one is slower
    (measured on the 2-core CPU: a SpikeCLIP ANN step right after a T=8 step took 2.33 s against 2.06 s after
    another ANN step; the allocator hands freshly mapped memory back), so each round starts with one untimed
    call of the first variant: no timed call follows a bigger variant, which would bias the ANN baseline up and
    every overhead down.
    """
    out = {k: dict(first_s=None, times=[], faults_mb=[]) for k in calls}
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
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[k]['times'].append(time.perf_counter() - t0)
            out[k]['faults_mb'].append((_minor_faults() - f0) * _PAGE_MB)
    for v in out.values():
        v['median_s'] = statistics.median(v['times'])
        v['median_faults_mb'] = statistics.median(v['faults_mb'])
    return out


def median_interval(values: Sequence[float], level: float = 0.9) -> Tuple[float, float]:
    """A distribution-free interval that holds the median of ``values``' population with at least ``level``.

    The order statistics ``x_(k)`` and ``x_(n+1-k)`` for the largest k with ``P(Binomial(n, 1/2) < k) <=
    (1 - level) / 2`` (sign-test interval; no assumption on the distribution of the timings). Below 5 values
    no k reaches 90%: the range is returned, which then holds the median with less than ``level``.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError('median_interval needs at least one value')
    def at_most(j: int) -> float:  # P(Binomial(n, 1/2) <= j)
        return sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n

    k = 1
    while k < (n + 1) // 2 and at_most(k) <= (1 - level) / 2:
        k += 1
    return xs[k - 1], xs[n - k]


def _variants(cfg: BenchConfig) -> List[Tuple[int, str]]:
    """(T, impl) in the order they are timed: roughly ascending in work, the ANN at batch T x B before each T."""
    out = [(1, ANN)]
    for T in cfg.T_values:
        if cfg.fair_baseline and T > 1:
            out.append((T, ANN_TB))
        out += [(T, impl) for impl in cfg.impls]
    return out


def _batch_of(T: int, impl: str, batch: int) -> int:
    """Batch the variant runs at: T x batch for the fair ANN baseline, else batch."""
    return T * batch if impl == ANN_TB else batch


def _make_optimizer(name: str, params) -> torch.optim.Optimizer:
    # lr=0: every variant runs the full optimizer step on the same, unchanging weights (torch has no lr=0
    # shortcut: AdamW still updates its moments and the weights with a zero step)
    if name == 'adamw':
        return torch.optim.AdamW(params, lr=0.0)
    if name == 'sgd':
        return torch.optim.SGD(params, lr=0.0)
    raise ValueError(f"Unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


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


# ----------------------------------------------------------------------------------- the machine's limit


def measure_gemm_peak(device: str = 'cpu', n: int = 4096, repeats: int = 5) -> Dict[str, Any]:
    """The machine's dense GEMM rate: GFLOP/s of an fp32 ``n x n x n`` matmul on the current torch threads.

    Args:
        device: Where to run it.
        n: Matrix size (4096: about 137 GFLOP per call, large enough for the BLAS to reach its peak).
        repeats: Timed calls after one untimed call; the median is the peak.

    Returns:
        dict(n, threads, gflops=[per call], median_gflops).
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    _sync(device)
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return dict(n=n, threads=torch.get_num_threads(), gflops=rates, median_gflops=statistics.median(rates))


def count_flops(fn: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """FLOPs of one call of ``fn`` by torch's ``FlopCounterMode`` (matmuls and convolutions, forward and backward).

    Returns:
        (total FLOPs, FLOPs per aten op).
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k).replace('aten.', ''): int(v) for k, v in counter.get_flop_counts().get('Global', {}).items()}
    return int(counter.get_total_flops()), per_op


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


# ------------------------------------------------------------------------------------- compile cost


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


# -------------------------------------------------------------------------------------------- the suite


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


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def fmt_value(v, spec='.2f'):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


PEAK_TARGET = 0.8  # the share of the measured GEMM rate every model should reach (issue 17)


def _variant_label(impl: str, batch: int) -> str:
    if impl == ANN:
        return 'ANN (identity neurons)'
    if impl == ANN_TB:
        return f'ANN at batch T x B = {batch}'
    base = _split_impl(impl)[0]
    return f"SNN, {base} LIF{', bf16 autocast' if base != impl else ''}"


def _why_below_peak(profile: Dict[str, Any], peak: Optional[float]) -> str:
    """One sentence from a step's profile: the kinds of op that take time without FLOPs, and the GEMMs' own rate."""
    kinds = profile['kinds']
    idle = sorted(((k, v['time_share']) for k, v in kinds.items() if k not in _GEMM_KINDS and v['time_share'] >= 0.02),
                  key=lambda kv: -kv[1])
    parts = [f"{k} {100 * share:.0f}% of the time with no counted FLOPs" for k, share in idle]
    for k in _GEMM_KINDS:
        v = kinds.get(k)
        if v and v['time_share'] > 0 and peak:
            rate = v['gflop'] / (v['time_share'] * profile['wall_s'])
            parts.append(f"{k} {100 * v['time_share']:.0f}% of the time at {rate:.0f} GFLOP/s "
                         f"({rate / peak:.2f} of peak)")
    return '; '.join(parts)


def _overhead_cell(row: Dict[str, Any], key: str) -> str:
    """The round-by-round median and its interval where measured (``1.03 (0.99-1.06)``), else the ratio of
    medians."""
    if row.get(f'{key}_paired') is None:
        return fmt_value(row.get(key))
    lo, hi = row[f'{key}_ci']
    return f"{row[f'{key}_paired']:.2f} ({lo:.2f}-{hi:.2f})"


def to_markdown(result: Dict[str, Any]) -> str:
    """The report as Markdown: machine, load and GEMM peak, then per model a speed table, a compute table and
    the profile of one step, then the compile cost of the fused neuron."""
    m, load, cfg = result['machine'], result['load'], result['config']
    gemm = result.get('gemm') or {}
    peak = gemm.get('peak_gflops')
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m.get('gpu', m['device'])}; torch {m['torch']}, "
        f"{m['torch_threads']} threads, spikingjelly {m['spikingjelly']}; fused LIF compiled: {m['fused_compiled']}; "
        f"denormals flushed to zero: {m.get('flush_denormal')}.",
        f"Batch {cfg['batch_size']}, {cfg.get('optimizer', 'adamw')} (lr 0), median of {cfg['repeats']} interleaved "
        f"calls; load average before {fmt_load(load.get('loadavg_before'))}, after {fmt_load(load.get('loadavg_after'))}; "
        f"other processes used {fmt_value(100 * load['other_processes_cpu_share'] if load.get('other_processes_cpu_share') is not None else None, '.0f')}% of the CPUs.",
    ]
    if peak:
        lines.append(
            f"Dense GEMM peak (fp32 {gemm['start']['n']}x{gemm['start']['n']} matmul, {gemm['start']['threads']} "
            f"threads, median): **{peak:.0f} GFLOP/s** (start of the run {gemm['start']['median_gflops']:.0f}, end "
            f"{gemm['end']['median_gflops']:.0f}).")
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
                  '| variant | T | train img/s | train overhead | fair | infer img/s | infer overhead | fair '
                  '| latency b1 (ms) | peak train MB | memory vs ANN | ckpt MB (cut) |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            ck = (f"{fmt_value(r['peak_train_ckpt_mb'], '.0f')} ({100 * r['ckpt_memory_cut']:.0f}%)"
                  if r.get('ckpt_memory_cut') is not None else '-')
            lines.append(
                f"| {_variant_label(r['impl'], r['batch_size'])} | {r['T']} | {fmt_value(r['train_img_s'], '.1f')} "
                f"| {_overhead_cell(r, 'train_overhead')} | {_overhead_cell(r, 'train_overhead_fair')} "
                f"| {fmt_value(r['infer_img_s'], '.1f')} | {_overhead_cell(r, 'infer_overhead')} "
                f"| {_overhead_cell(r, 'infer_overhead_fair')} | {fmt_value(r['latency_b1_ms'], '.1f')} "
                f"| {fmt_value(r.get('peak_train_mb'), '.0f')} | {fmt_value(r.get('memory_vs_ann'))} | {ck} |")
        if any('train_gflop' in r for r in rows):
            lines += ['', '| variant | T | train GFLOP/step | train GFLOP/s | of peak | infer GFLOP/batch '
                          '| infer GFLOP/s | of peak | fresh memory touched per train step (MB) |',
                      '|---|---|---|---|---|---|---|---|---|']
            for r in rows:
                lines.append(
                    f"| {_variant_label(r['impl'], r['batch_size'])} | {r['T']} | {fmt_value(r.get('train_gflop'), '.4g')} "
                    f"| {fmt_value(r.get('train_gflops'), '.4g')} | {fmt_value(r.get('train_peak_fraction'))} "
                    f"| {fmt_value(r.get('infer_gflop'), '.4g')} | {fmt_value(r.get('infer_gflops'), '.4g')} "
                    f"| {fmt_value(r.get('infer_peak_fraction'))} | {fmt_value(r.get('train_faults_mb'), '.0f')} |")
            below = [r for r in rows if any((r.get(f'{k}_peak_fraction') or 1) < PEAK_TARGET for k in ('train', 'infer'))]
            if below and peak:
                lines.append('')
                lines.append(f'Below {PEAK_TARGET} of the GEMM peak: ' + ', '.join(
                    f"{_variant_label(r['impl'], r['batch_size'])} T={r['T']}" for r in below) + '.')
        prof = (result.get('profile') or {}).get(name)
        if prof:
            for label, p in prof.items():
                for kind in ('train', 'infer'):
                    pk = p[kind]
                    lines += ['', f"Profile of one {'training step' if kind == 'train' else 'inference call'}, "
                                  f"{_variant_label(p['impl'], cfg['batch_size'])}, T={p['T']} "
                                  f"({pk['gflop']:.1f} GFLOP in {pk['wall_s']:.2f} s under the profiler): "
                                  + (_why_below_peak(pk, peak) or '-') + '.', '',
                              '| kind of op | time share | FLOP share |', '|---|---|---|']
                    lines += [f"| {k} | {100 * v['time_share']:.1f}% | {100 * v['flop_share']:.1f}% |"
                              for k, v in pk['kinds'].items()]
                    lines.append('')
                    lines.append('Top ops by self time: ' + ', '.join(
                        f"`{o['name'][:48]}` {100 * o['time_share']:.0f}% ({o['calls']} calls)" for o in pk['top_ops']) + '.')
        fused_first = [max(0.0, r['first_train_call_s'] - r['train_s']) for r in rows
                       if _split_impl(r['impl'])[0] in ('fused', 'auto')]
        if fused_first:
            lines.append('')
            lines.append(f'First-call extra time of the fused variants in this run (compilation with the inductor '
                         f'cache as this machine has it, plus first-touch costs): up to {max(fused_first):.1f} s.')
    comp = result.get('compile')
    if comp:
        lines += ['', '### one-time compile cost of the fused LIF', '',
                  'Fresh processes with a new inductor cache: cold = empty cache, warm = the cache the cold run '
                  'filled. Per T and neuron constants: first call minus the steady call (training: forward and '
                  'backward kernels; inference: the forward-only kernel).', '',
                  '| T | threshold | cold s | warm s |', '|---|---|---|---|']
        for c, w in zip(comp['cold']['rows'], comp['warm']['rows']):
            lines.append(f"| {c['T']} | {c['params']['v_threshold']:g} | {c['compile_s']:.1f} | {w['compile_s']:.1f} |")
        lines.append(f"| all | | **{comp['cold']['total_compile_s']:.1f}** | **{comp['warm']['total_compile_s']:.1f}** |")
        lines.append('')
        lines.append(f"Whole probe process (imports, compiles, calls): cold {comp['cold']['process_s']:.1f} s, warm "
                     f"{comp['warm']['process_s']:.1f} s; compiled: {comp['cold']['compiled']}.")
    for name, why in result.get('skipped', {}).items():
        lines += ['', f'### {name}', '', f'skipped: {why}']
    if cfg.get('isolate_T'):
        lines += ['', 'Each T was timed in its own fresh process with the ANN at batch B and T x B beside it; its '
                      'overheads are against the ANN timed there (the ANN row above is the first process\'s).']
    lines += ['', 'overhead = SNN time / (T x ANN time at batch B); fair = SNN time / ANN time at batch T x B (the '
                  'same activations, one optimizer step), each the median over the rounds of the ratio of two calls '
                  'timed in the same round, with a distribution-free interval that holds the median with at least '
                  '90% (with 7 rounds or fewer, their range); memory = peak extra memory of a training step; of peak = '
                  'GFLOP/s achieved / the dense GEMM peak above (FLOPs by torch FlopCounterMode: matmuls and '
                  'convolutions, forward and backward); fresh memory touched = minor page faults of the timed call '
                  '(memory the allocator took from the kernel anew, which the kernel zeroes first).']
    return '\n'.join(lines) + '\n'


def fmt_load(v):
    return '-' if not v else '/'.join(f'{x:.2f}' for x in v)

