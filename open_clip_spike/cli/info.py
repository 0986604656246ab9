"""``spikeclip info``."""
import argparse
import json
import sys
from typing import List, Optional

from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.experiments.info import model_info
from open_clip_spike.experiments import info as _experiment


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip info', description=_experiment.__doc__)
    p.add_argument('model', help="a registered timm_spike model, e.g. spikingformer_clip")
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--T', type=int, default=None, help='time steps (default: the model\'s own)')
    p.add_argument('--json', action='store_true', help='print the full description as JSON')
    p.add_argument('--layers', action='store_true', help='print the firing rate of every neuron layer')
    args = p.parse_args(argv)
    kwargs = {} if args.T is None else {'T': args.T}
    try:
        check_model_config_env()
        if args.batch_size < 1:
            raise ValueError(f'--batch-size must be >= 1, got {args.batch_size}')
        info = model_info(args.model, batch_size=args.batch_size, **kwargs)
    except USER_ERRORS as e:
        return fail('spikeclip info', e)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model            {info['model']}")
    print(f"parameters       {info['params']:,} ({info['params'] / 1e6:.2f} M)")
    print(f"time steps T     {info['T']}")
    print(f"input shape      {info['input_shape']}")
    print(f"features shape   {info['features_shape']}  (T, B, C, H, W)")
    print(f"output shape     {info['output_shape']}")
    print(f"firing rate      {info['mean_firing_rate']:.4f} spikes/neuron/step, mean of "
          f"{len(info['firing_rates'])} neuron layers (random input, untrained weights, BN batch statistics)")
    if args.layers:
        for k, v in info['firing_rates'].items():
            print(f'  {k:<40} {v:.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
