"""``spikeclip info MODEL``: build a registered spiking model and describe it."""
import logging
from typing import Any, Dict

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
