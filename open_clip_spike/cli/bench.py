"""``spikeclip bench``."""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from timm_spike.utils import atomic_write
from open_clip_spike.experiments.bench import (
    BF16, BenchConfig, IMPLS, MODELS, probe_compile, probe_memory, probe_timing, run_bench, to_markdown)
from open_clip_spike.experiments import bench as _experiment


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip bench', description=_experiment.__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='bench-results', help='folder for bench.md and bench.json')
    p.add_argument('--quick', action='store_true', help='tiny models, seconds: check that the suite runs')
    p.add_argument('--models', nargs='+', default=None, help=f'subset of {list(MODELS)}')
    p.add_argument('--T', type=int, nargs='+', default=None, dest='T_values', help='time steps (default 1 2 4 8)')
    p.add_argument('--impls', nargs='+', default=None, choices=list(IMPLS) + [i + BF16 for i in IMPLS],
                   help='neuron implementations; a +bf16 suffix runs that variant under bf16 autocast')
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--repeats', type=int, default=None)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default 2)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory subprocesses')
    p.add_argument('--keep-denormals', action='store_true', help='do not flush denormal floats to zero')
    p.add_argument('--optimizer', choices=('adamw', 'sgd'), default=None, help='optimizer of the training step (lr 0)')
    p.add_argument('--no-fair-baseline', action='store_true', help='skip the ANN at batch T x B')
    p.add_argument('--no-flops', action='store_true', help='skip FLOP counting (and GFLOP/s against the GEMM peak)')
    p.add_argument('--gemm-size', type=int, default=None, help='n of the fp32 n x n matmul of the peak (0: skip)')
    p.add_argument('--no-profile', action='store_true', help='skip the per-kind profile of one step per model')
    p.add_argument('--profile-T', type=int, default=None, help='T of the profiled SNN step (default 4)')
    p.add_argument('--no-compile-cost', action='store_true', help='skip the cold/warm compile subprocesses')
    p.add_argument('--probe-memory', default=None, help=argparse.SUPPRESS)  # internal: one memory subprocess
    p.add_argument('--probe-compile', default=None, help=argparse.SUPPRESS)  # internal: one compile subprocess
    p.add_argument('--probe-timing', default=None, help=argparse.SUPPRESS)  # internal: the variants of one T
    p.add_argument('--no-isolate-T', action='store_true',
                   help='time every T in this one process (default: each T in its own fresh process)')
    g = p.add_argument_group('event-driven inference (--sparse)')
    g.add_argument('--sparse', action='store_true',
                   help='measure event-driven inference against dense inference and the ANN twin (sparse.md)')
    g.add_argument('--checkpoint', default=None, help='a trained student (safetensors) measured at its own rates')
    g.add_argument('--student-model', default='SpikeCLIP-Tiny', help='the student\'s open_clip config')
    g.add_argument('--data', default=None, help='images: IDX folder (Fashion-MNIST), ImageFolder or skimage')
    g.add_argument('--rate', type=float, default=None, help='firing rate untrained towers are calibrated to')
    # (--models: the untrained towers to measure, e.g. spikingformer_clip SpikeCLIP-Spikingformer-4-384; none: only
    # the --checkpoint student)
    g.add_argument('--sweep-rates', type=float, nargs='*', default=None, help='rates of the sweep (none: skip)')
    g.add_argument('--rounds', type=int, default=None, help='timed rounds per variant')
    g.add_argument('--batch-sizes', type=int, nargs='+', default=None, help='batches timed (default 256 1)')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.sparse:
        return _sparse(p, args)

    if args.probe_memory is not None:
        results = [probe_memory(spec) for spec in json.loads(args.probe_memory)]
        atomic_write(args.out, json.dumps(results).encode())
        return 0
    if args.probe_timing is not None:
        atomic_write(args.out, json.dumps(probe_timing(json.loads(args.probe_timing))).encode())
        return 0
    if args.probe_compile is not None:
        atomic_write(args.out, json.dumps(probe_compile(json.loads(args.probe_compile))).encode())
        return 0

    overrides = {k: v for k, v in dict(
        models=args.models, T_values=args.T_values, impls=args.impls, batch_size=args.batch_size,
        repeats=args.repeats, threads=args.threads, device=args.device, optimizer=args.optimizer,
        gemm_size=args.gemm_size, profile_T=args.profile_T).items() if v is not None}
    for flag, key in ((args.no_memory, 'memory'), (args.no_fair_baseline, 'fair_baseline'), (args.no_flops, 'flops'),
                      (args.no_profile, 'profile'), (args.no_compile_cost, 'compile_cost'),
                      (args.no_isolate_T, 'isolate_T')):
        if flag:
            overrides[key] = False
    if args.keep_denormals:
        overrides['flush_denormal'] = False
    if args.device.startswith('cuda') and 'impls' not in overrides:
        overrides['impls'] = ('spikingjelly',)  # spikingjelly's own CUDA/Triton kernels are the GPU path
    unknown = set(overrides.get('models', ())) - set(MODELS)
    if unknown:
        p.error(f'unknown models {sorted(unknown)}; choose from {list(MODELS)}')
    cfg = BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_bench(cfg)
    os.makedirs(args.out, exist_ok=True)
    md = to_markdown(result)
    atomic_write(os.path.join(args.out, 'bench.json'), json.dumps(result, indent=2).encode())
    atomic_write(os.path.join(args.out, 'bench.md'), md.encode())
    print(md)
    return 0


def _sparse(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from open_clip_spike.experiments.bench.sparse import SparseBenchConfig, run_sparse_bench, sparse_markdown
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        p.error(f'--checkpoint {args.checkpoint}: no such file (the demo writes out/demo/dual.safetensors)')
    overrides = {k: v for k, v in dict(
        student=args.checkpoint, student_model=args.student_model, data=args.data, rate=args.rate,
        sweep_rates=args.sweep_rates, rounds=args.rounds, batch_sizes=args.batch_sizes, threads=args.threads,
        models=() if args.models == ['none'] else args.models).items() if v is not None}
    try:
        cfg = SparseBenchConfig.quick_config(**overrides) if args.quick else SparseBenchConfig(**overrides)
        result = run_sparse_bench(cfg)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f'spikeclip bench: error: {e}\n')
    os.makedirs(args.out, exist_ok=True)
    md = sparse_markdown(result)
    atomic_write(os.path.join(args.out, 'sparse.json'), json.dumps(result, indent=2).encode())
    atomic_write(os.path.join(args.out, 'sparse.md'), md.encode())
    print(md)
    return 0


if __name__ == '__main__':  # also the bench's own timing and compile probes (subprocesses), tuned as the command
    from timm_spike.utils import tune_allocator
    tune_allocator()
    sys.exit(main())
