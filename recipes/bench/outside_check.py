#!/usr/bin/env python
"""An outsider's check of the spiking overhead, written without the bench's code.

Two separate models with the same weights: the SNN (``timm.create_model``, the default neuron switch: the fused LIF
on the CPU) and its ANN (a copy with every spiking neuron an ``nn.Identity`` and T=1), each with its own optimizer
(a real learning rate: the weights move as in training). Calls are interleaved ``ANN(B), ANN(T x B), SNN`` per
round; after the warm-up rounds each call is timed with the wall clock and the medians give

    overhead      = SNN step / (T x ANN step at batch B)
    fair overhead = SNN step / ANN step at batch T x B   (same activations, one optimizer step)

and the same two ratios taken round by round (the calls of one round run seconds apart, so a slow patch of a
shared machine cancels), as a median with the interval that holds it with at least 90% (sign test).

The ANN is built by hand here on purpose, so that the check shares nothing with ``spikeclip bench`` but the model.
``spikeclip bench --models spikingformer_clip --T 4 --impls fused --optimizer sgd`` should agree with it within the
spread this script prints (recipes/bench/run_cpu.sh runs both).

    python recipes/bench/outside_check.py --T 4 --batch-size 32 --threads 2 --optimizer sgd
"""
import argparse
import copy
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn


def build(model_name: str, T: int):
    """The SNN and its ANN (identity neurons, one time step) with equal weights."""
    import timm
    import timm_spike  # noqa: F401  (registers the models)
    from spikingjelly.activation_based import neuron
    from timm_spike.utils import tune_allocator

    tune_allocator()  # the allocator the spikeclip commands run with (TIMM_SPIKE_TUNE_ALLOCATOR=0 keeps glibc's)

    torch.manual_seed(0)
    snn = timm.create_model(model_name, T=T)
    ann = copy.deepcopy(snn)
    for module in list(ann.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, neuron.BaseNode):
                setattr(module, child_name, nn.Identity())
        if isinstance(vars(module).get('T'), int):
            module.T = 1
    return snn, ann


def sign_test_interval(xs):
    """Median of the per-round ratios and the sign-test interval of that median (order statistics r and n+1-r
    with the largest r whose binomial tail stays within 5% on each side; the range when there are under 5)."""
    xs, n = sorted(xs), len(xs)
    tail = lambda r: sum(math.comb(n, j) for j in range(r)) / 2 ** n  # P(Binomial(n, 1/2) <= r - 1)
    r = max([1] + [r for r in range(1, n // 2 + 1) if tail(r) <= 0.05])
    return dict(median=statistics.median(xs), low=xs[r - 1], high=xs[n - r], n=n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='spikingformer_clip')
    p.add_argument('--T', type=int, default=4)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--optimizer', choices=('sgd', 'adamw'), default='sgd')
    p.add_argument('--lr', type=float, default=None, help='default: 0.01 for SGD, 1e-3 for AdamW')
    p.add_argument('--rounds', type=int, default=5, help='timed rounds (after the warm-up rounds)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--flush-denormal', action='store_true')
    p.add_argument('--json', default=None, help='also write the figures to this file')
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    snn, ann = build(args.model, args.T)
    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == 'sgd' else 1e-3)
    make_opt = (lambda m: torch.optim.SGD(m.parameters(), lr=lr)) if args.optimizer == 'sgd' else \
        (lambda m: torch.optim.AdamW(m.parameters(), lr=lr))
    opt_snn, opt_ann = make_opt(snn), make_opt(ann)
    size = getattr(snn, 'img_size', (32, 32))
    g = torch.Generator().manual_seed(0)
    x_b = torch.randn(args.batch_size, 3, *size, generator=g)
    x_tb = torch.randn(args.T * args.batch_size, 3, *size, generator=g)

    def step(model, opt, x):
        model.train()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    calls = {'ann_B': lambda: step(ann, opt_ann, x_b), 'ann_TxB': lambda: step(ann, opt_ann, x_tb),
             'snn': lambda: step(snn, opt_snn, x_b)}
    times = {k: [] for k in calls}
    load_before = os.getloadavg()
    for r in range(args.warmup + args.rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if r >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [s / (args.T * a) for s, a in zip(times['snn'], times['ann_B'])]
    per_round_fair = [s / a for s, a in zip(times['snn'], times['ann_TxB'])]
    paired, paired_fair = sign_test_interval(per_round), sign_test_interval(per_round_fair)
    result = dict(
        model=args.model, T=args.T, batch_size=args.batch_size, threads=args.threads, optimizer=args.optimizer,
        lr=lr, flush_denormal=args.flush_denormal, times_s=times, median_s=med,
        overhead=med['snn'] / (args.T * med['ann_B']), overhead_fair=med['snn'] / med['ann_TxB'],
        overhead_per_round=per_round, overhead_fair_per_round=per_round_fair,
        overhead_paired=paired, overhead_fair_paired=paired_fair,
        loadavg_before=load_before, loadavg_after=os.getloadavg())
    print(f"{args.model} T={args.T} batch {args.batch_size}, {args.threads} threads, {args.optimizer} lr {lr}: "
          f"ANN(B) {med['ann_B']:.3f} s, ANN(TxB) {med['ann_TxB']:.3f} s, SNN {med['snn']:.3f} s (medians of "
          f"{args.rounds})")
    print(f"round by round (median, interval holding it with >= 90%): vs T x ANN(B) {paired['median']:.3f} "
          f"({paired['low']:.3f}-{paired['high']:.3f}); vs ANN(TxB) {paired_fair['median']:.3f} "
          f"({paired_fair['low']:.3f}-{paired_fair['high']:.3f})")
    print(f"overhead vs T x ANN(B): {result['overhead']:.3f} (per round {min(per_round):.3f}-{max(per_round):.3f}); "
          f"vs ANN(TxB): {result['overhead_fair']:.3f} (per round {min(per_round_fair):.3f}-{max(per_round_fair):.3f}); "
          f"load average {load_before[0]:.2f} -> {result['loadavg_after'][0]:.2f}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
