"""timm_spike: spiking neural network backbones registered as timm models.

``import timm_spike`` registers every model with timm (timm has no plugin discovery), after which
``timm.create_model('spikingformer_clip')`` and ``timm.list_models('spikingformer*')`` work.
The LIF implementation is a process-wide switch (``set_lif_impl``, ``lif_impl``, env ``TIMM_SPIKE_LIF_IMPL``).
Importing it also makes glibc keep freed tensor memory for reuse (``utils.tune_allocator``: 1.4-2.4x faster spiking
training and inference on the CPU; ``TIMM_SPIKE_TUNE_ALLOCATOR=0`` in the environment keeps glibc's defaults),
and makes timm's safetensors file loaders check the digest a file records (``timm_spike.integrity``) and its
``local-dir:`` / ``hf-hub:`` configs their types and size before building (``timm_spike.bounds``).
"""
from .layers import (
    LIF_IMPLS, LIFConfig, TemporalReadout, create_lif, get_lif_impl, is_spiking_neuron, lif_impl, set_lif_impl)
from .models import *  # noqa: F401,F403  (registers the models)
from .bounds import install_timm_config_check
from .integrity import install_timm_check
from .utils import tune_allocator

tune_allocator()  # fast by default: every user of the models, not only the spikeclip commands
install_timm_check()  # timm's file and local-dir: loaders check the digest a weight file records
install_timm_config_check()  # and a local-dir: / hf-hub: config.json is checked before the model is built

__version__ = '0.1.0'
