"""open_clip_spike: SpikeCLIP (spiking image + text towers) as open_clip models.

The model configs, losses, training entry point, zero-shot evaluation and Hub tools arrive in their
own modules; importing this package also registers the timm_spike backbones with timm.
"""
import timm_spike  # noqa: F401  (registers the spiking backbones with timm)

__version__ = '0.1.0'
