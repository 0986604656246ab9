"""``spikeclip info MODEL``: build a registered spiking model and describe it."""
import argparse
import json
import logging
import sys
from typing import Any, Dict, List, Optional

import timm
import torch

from timm_spike.energy import firing_rates

_logger = logging.getLogger(__name__)


def model_info(name: str, batch_size: int = 2, seed: int = 0, **model_kwargs: Any) -> Dict[str, Any]:
    """Build timm model ``name``, run one batch of random images through it (eval mode) and describe it."""
    if name not in timm.list_models():
        known = ', '.join(timm.list_models('spikingformer*'))
        raise ValueError(f'Unknown model {name!r}; registered spiking models: {known}')
    model = timm.create_model(name, **model_kwargs).eval()
    cfg = model.pretrained_cfg
    input_size = tuple(cfg['input_size'])
    if hasattr(model, 'img_size'):
        input_size = (model.in_chans, *model.img_size)
    x = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(seed))
    # An untrained model's BN running statistics are the identity, which leaves it nearly silent; measure
    # the rates with batch statistics instead (no_grad, so nothing is learned), then run in eval mode.
    rates = firing_rates(model.train(), x)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        out = model.forward_head(features)
    spikes = sum(rates.values())
    return {
        'model': name,
        'params': sum(p.numel() for p in model.parameters()),
        'T': getattr(model, 'T', None),
        'input_shape': [batch_size, *input_size],
        'features_shape': list(features.shape),
        'output_shape': list(out.shape),
        'num_features': model.num_features,
        'num_classes': model.num_classes,
        'mean_firing_rate': spikes / len(rates) if rates else None,
        'firing_rates': rates,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip info', description=__doc__)
    p.add_argument('model', help="a registered timm_spike model, e.g. spikingformer_clip")
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--T', type=int, default=None, help='time steps (default: the model\'s own)')
    p.add_argument('--json', action='store_true', help='print the full description as JSON')
    p.add_argument('--layers', action='store_true', help='print the firing rate of every neuron layer')
    args = p.parse_args(argv)
    kwargs = {} if args.T is None else {'T': args.T}
    try:
        info = model_info(args.model, batch_size=args.batch_size, **kwargs)
    except ValueError as e:
        print(f'spikeclip info: error: {e}', file=sys.stderr)
        return 2
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
