"""timm_spike: spiking neural network backbones registered as timm models.

``import timm_spike`` registers every model with timm (timm has no plugin discovery), after which
``timm.create_model('spikingformer_clip')`` and ``timm.list_models('spikingformer*')`` work.
"""
from .layers import LIFConfig, TemporalReadout, create_lif, is_spiking_neuron
from .models import *  # noqa: F401,F403  (registers the models)

__version__ = '0.1.0'
