"""Break-even spike rates of the event-driven layers against their dense path, per layer shape.

For each layer shape of the registered models (Spikingformer's stem convolutions, with and without the max-pool
of spikes, and its linear layers; SpikeCLIP-Tiny's narrower ones), the neuron's input is set so that it fires at
each rate of a sweep, and the layer's call is timed dense and event-driven (``set_spike_kernel('sparse')``),
interleaved; the table shows dense time / event-driven time (above 1: event-driven is faster). The rates where it
crosses 1 are what ``timm_spike.layers.spike_kernels.SPARSE_MAX_RATE`` stays below.

    python recipes/bench/sparse_break_even.py --threads 2 > bench-results/<run>/break_even.md
"""
import argparse
import statistics
import time

import torch

import timm_spike  # noqa: F401
from timm_spike.layers import SpikingConv2d, SpikingLinear, create_lif, spike_kernel
from timm_spike.layers import spike_kernels
from timm_spike.utils import tune_allocator

# (kind, T, positions or (B, H, W), input channels, output channels, pool) at batch 16 / 2048 tokens
SHAPES = [
    ('linear', 4, 2048, 384, 1536, None),  # spikingformer_clip MLP fc1 (and qkv-like widths)
    ('linear', 4, 2048, 1536, 384, None),  # fc2
    ('linear', 4, 8192, 128, 384, None),  # SpikeCLIP-Tiny qkv
    ('conv3x3', 4, (16, 32, 32), 48, 96, None),  # spikingformer_clip stage 1
    ('conv3x3', 4, (16, 32, 32), 96, 192, None),  # stage 2
    ('conv3x3', 4, (16, 32, 32), 192, 384, 'spike'),  # stage 3 (pooled spikes)
    ('conv3x3', 4, (64, 32, 32), 16, 32, None),  # SpikeCLIP-Tiny stage 1
    ('conv3x3', 4, (64, 32, 32), 32, 64, 'spike'),  # SpikeCLIP-Tiny stage 2
]
RATES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45)


def _layer_and_input(kind, T, where, cin, cout, pool, shift, g):
    if kind == 'linear':
        layer = SpikingLinear(create_lif(), torch.randn(cout, cin, generator=g) * 0.1, torch.randn(cout, generator=g))
        x = torch.randn(T, where, cin, generator=g) + shift
    else:
        B, H, W = where
        layer = SpikingConv2d(create_lif(), torch.randn(cout, cin, 3, 3, generator=g) * 0.1,
                              torch.randn(cout, generator=g), pool=pool)
        x = (torch.randn(T, B, H, W, cin, generator=g) + shift).permute(0, 1, 4, 2, 3)
    return layer.eval(), x


def _shift_for(rate: float) -> float:
    """The input shift at which a LIF fed N(shift, 1) currents fires at ``rate`` (bisection)."""
    lif, g = create_lif(), torch.Generator().manual_seed(1)
    noise = torch.randn(4, 200000, generator=g)
    lo, hi = -6.0, 6.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if float(lif(noise + mid).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    shifts = {r: _shift_for(r) for r in RATES}
    print(f'Dense time / event-driven time per call, median of {args.rounds} interleaved rounds, {args.threads} '
          f'threads; compiled kernels: {spike_kernels.native_kernels_available()}. Rate: measured at the layer input '
          f'(after the max-pool for pooled stages).\n')
    print('| layer | ' + ' | '.join(f'rate ~{r}' for r in RATES) + ' |')
    print('|---|' + '---|' * len(RATES))
    for kind, T, where, cin, cout, pool in SHAPES:
        cells = []
        for r in RATES:
            layer, x = _layer_and_input(kind, T, where, cin, cout, pool, shifts[r], torch.Generator().manual_seed(0))
            times = {'dense': [], 'sparse': []}
            with torch.inference_mode():
                for i in range(args.rounds + 1):
                    for kernel in times:
                        with spike_kernel(kernel):
                            start = time.perf_counter()
                            layer(x)
                            if i:
                                times[kernel].append(time.perf_counter() - start)
                with spike_kernel('sparse'):
                    layer(x)
                    measured = spike_kernels.last_rate()
            ratio = statistics.median(d / s for d, s in zip(times['dense'], times['sparse']))
            cells.append(f'{measured:.3f}: {ratio:.2f}x')
        name = f'{kind} {cin}->{cout} ' + (f'{where} positions' if kind == 'linear' else f'{where[1]}x{where[2]}') + (
            f', pool {pool}' if pool else '')
        print(f'| {name} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
    main()
