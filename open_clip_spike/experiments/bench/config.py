"""What the bench measures (``BenchConfig``), its models and variants."""
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from timm_spike.layers import LIF_IMPLS

MODELS = ('spikingformer_clip', 'text', 'SpikeCLIP-Spikingformer-4-384')
ANN = 'ann'  # the variant with every neuron replaced by an identity, run at T=1
ANN_TB = 'ann-TxB'  # the same ANN at batch T x B: the fair baseline of the SNN at T (one optimizer step)
BF16 = '+bf16'  # impl suffix: the variant runs under bf16 autocast (e.g. 'fused+bf16'); the ANN stays fp32
IMPLS = LIF_IMPLS  # the neuron implementations (timm_spike.layers.set_lif_impl)


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


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))
