"""FX tracing of spiking models: the modules and functions FX must not trace into, registered with timm.

timm's FX feature extraction (``timm.models._features_fx``, ``create_feature_extractor``) and its model tests trace
with the leaf modules and functions of ``timm.layers.register_notrace_module`` / ``register_notrace_function``.
Spiking layers cannot be traced through: spikingjelly's multi-step layers (``base.StepModule``: the time-folding
``layer.Conv2d``, ``BatchNorm``, ``MaxPool2d``, ``SeqToANNContainer`` ...) dispatch on their ``step_mode`` and on the
input's rank, and its neurons (``neuron.BaseNode``) run a loop over time with Python-side state. As leaves they
are single graph nodes that run eagerly, which is also what a graph of a spiking network should show (one node per
neuron layer, as NIR exports expect). Model-specific leaves are registered next to their classes.
"""
from spikingjelly.activation_based import base, neuron
from timm.layers import register_notrace_module

from .readout import TemporalReadout

__all__ = ['SPIKING_LEAF_MODULES']

SPIKING_LEAF_MODULES = (base.StepModule, neuron.BaseNode, TemporalReadout)
for _cls in SPIKING_LEAF_MODULES:
    register_notrace_module(_cls)
