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
records the machine, thread count, load average and how much CPU other processes used while it ran (a busy core
slows small-op SNN code several times), and the report says so.

Peak CPU memory is the high-water mark of the process's resident set during one training step, measured in a
fresh subprocess with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so every tensor buffer is its
own mapping and freed memory leaves the resident set; this agrees with the torch profiler's allocation
timeline to within 1% and costs nothing during the step. On CUDA it is ``torch.cuda.max_memory_allocated``.

The modules: ``config`` (``BenchConfig``, the variants), ``models`` (the benchmark models), ``timing`` (interleaved
rounds, the load monitor, the interval of the median), ``flops`` (FLOP counting, the GEMM peak), ``profile`` (a step
split by kind of operation), ``neuron`` (the fused LIF's compile cost and speed), ``memory`` (peak memory in
subprocesses), ``run`` (the driver) and ``report`` (Markdown).
"""
from timm_spike.layers.fused_lif import FusedLIFParams  # noqa: F401  (the neuron constants in results)

from .config import ANN, ANN_TB, BF16, IMPLS, MODELS, QUICK_KWARGS, BenchConfig, _batch_of, _split_impl, _variants
from .flops import count_flops, measure_gemm_peak
from .memory import bench_memory, peak_train_memory, peak_train_memory_many, probe_memory
from .models import _make_optimizer, _Variants, build_bench_model
from .neuron import bench_neuron, measure_compile_cost, probe_compile
from .profile import profile_step
from .report import PEAK_TARGET, fmt_load, fmt_value, to_markdown
from .run import bench_model, bench_model_isolated, probe_timing, run_bench
from .timing import LoadMonitor, _timed_rounds, machine_info, median_interval

__all__ = ['BenchConfig', 'run_bench', 'median_interval', 'build_bench_model', 'bench_model', 'bench_model_isolated',
           'peak_train_memory', 'peak_train_memory_many', 'measure_gemm_peak', 'count_flops', 'profile_step',
           'measure_compile_cost', 'probe_compile', 'to_markdown']
