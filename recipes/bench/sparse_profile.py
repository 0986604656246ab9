"""Where an event-driven call's time goes: per layer of a tower's inference form, and per native kernel.

    python recipes/bench/sparse_profile.py spikingformer_clip --batch 64 --rate 0.04
    python recipes/bench/sparse_profile.py SpikeCLIP-Tiny --checkpoint out/demo/dual.safetensors \\
        --data /usr/share/datasets/fashion-mnist --batch 256

Prints the dense call's time, then for 'auto' and 'sparse' the time of each tokenizer stage, attention and MLP
(forward hooks), the spike rate each saw, and the time inside each compiled kernel.
"""
import argparse
import collections
import time

import torch
from timm.utils import reparameterize_model

import timm_spike  # noqa: F401
from timm_spike.energy import calibrate_firing_rates
from timm_spike.layers import spike_kernel
from timm_spike.layers import spike_kernels
from timm_spike.utils import tune_allocator

LAYERS = ('SpikingConv2d', 'FoldedConv2d', 'FusedSpikingSelfAttention', 'FusedSpikingMLP')


class _Timed:
    """The compiled kernels with each call's wall time added up by name."""

    def __init__(self, lib, acc):
        self.lib, self.acc = lib, acc

    def __getattr__(self, name):
        fn = getattr(self.lib, name)

        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            self.acc[f'kernel {name}'] += time.perf_counter() - start
            return out
        return call


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('model', help="a timm model (calibrated, untrained) or 'SpikeCLIP-Tiny' with --checkpoint")
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--data', default=None, help='IDX folder of the images for a checkpoint')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--rate', type=float, default=0.04)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tune_allocator()
    if args.checkpoint:
        import open_clip
        import open_clip_spike  # noqa: F401
        from open_clip_spike.data import build_dataset
        clip, _, pre = open_clip.create_model_and_transforms(args.model, pretrained=args.checkpoint)
        model = clip.visual.trunk
        ds = build_dataset(args.data, 'test', pre)
        x = torch.stack([ds[i][0] for i in range(args.batch)])
    else:
        import timm
        model = timm.create_model(args.model)
        calibrate_firing_rates(model, torch.randn(8, 3, *model.img_size), args.rate, steps=10)
        x = torch.randn(args.batch, 3, *model.img_size)
    model.eval()
    fused = reparameterize_model(model)
    lib = spike_kernels._load()
    acc = collections.defaultdict(float)
    rates = {}
    for name, mod in fused.named_modules():
        if type(mod).__name__ in LAYERS:
            mod.register_forward_pre_hook(lambda m, i: setattr(m, '_start', time.perf_counter()))
            mod.register_forward_hook(lambda m, i, o, name=name: (
                acc.__setitem__(name, acc[name] + time.perf_counter() - m._start),
                rates.__setitem__(name, spike_kernels.last_rate())))
    with torch.inference_mode():
        with spike_kernel('dense'):
            model(x)
            start = time.perf_counter()
            model(x)
            print(f'dense (the model as trained): {time.perf_counter() - start:.3f} s')
        for kernel in ('auto', 'sparse'):
            with spike_kernel(kernel):
                fused(x)
                acc.clear()
                spike_kernels._lib = _Timed(lib, acc)
                try:
                    start = time.perf_counter()
                    fused(x)
                    total = time.perf_counter() - start
                finally:
                    spike_kernels._lib = lib
            print(f'{kernel}: {total:.3f} s')
            for k, v in acc.items():
                rate = f'  rate {rates[k]:.3f}' if rates.get(k) is not None else ''
                print(f'  {k:<45} {v * 1e3:8.1f} ms{rate}')


if __name__ == '__main__':
    main()
