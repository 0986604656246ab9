"""open_clip_spike: SpikeCLIP (spiking image + text towers) as open_clip models.

``import open_clip_spike`` registers the spiking backbones with timm and the SpikeCLIP model configs with
open_clip, after which ``open_clip.create_model_and_transforms('SpikeCLIP-Spikingformer-4-384')``,
``open_clip.get_tokenizer(...)`` and ``open_clip.list_models()`` know them.
"""
import timm_spike  # noqa: F401  (registers the spiking backbones with timm)

from .factory import MODEL_CONFIG_DIR, list_spikeclip_models, register_model_configs
from .model import SpikeCLIP, SpikingTimmModel
from .text import SpikingTextMLP, SpikingTextTransformer

register_model_configs()

__version__ = '0.1.0'
