"""timm_spike: spiking neural network backbones registered as timm models.

``import timm_spike`` registers every model with timm (timm has no plugin discovery), after which
``timm.create_model('spikingformer_clip')`` and ``timm.list_models('spikingformer*')`` work.
The LIF implementation is a process-wide switch (``set_lif_impl``, ``lif_impl``, env ``TIMM_SPIKE_LIF_IMPL``), and
so is the kernel of the spike-input layers of a model in inference form (``timm.utils.reparameterize_model``):
``set_spike_kernel('auto' | 'sparse' | 'dense')``, env ``TIMM_SPIKE_KERNEL``; ``inference_form(model)`` is what the
``spikeclip`` commands run. ``timm_spike.utils.tune_allocator()`` makes glibc keep freed tensor memory for reuse
(faster spiking training and inference on the CPU, as the ``spikeclip`` commands run); importing timm_spike does
not call it. Importing it makes timm's safetensors file loaders check the digest a file records
(``timm_spike.integrity``) and its ``local-dir:`` / ``hf-hub:`` configs their types and size before building
(``timm_spike.bounds``).
"""
from .layers import (
    LIF_IMPLS, LIFConfig, TemporalReadout, create_lif, get_lif_impl, is_spiking_neuron, lif_impl, set_lif_impl)
from .layers import SPIKE_KERNELS, get_spike_kernel, inference_form, set_spike_kernel, spike_kernel
from .models import *  # noqa: F401,F403  (registers the models)
from .bounds import install_timm_config_check
from .integrity import install_timm_check

install_timm_check()  # timm's file and local-dir: loaders check the digest a weight file records
install_timm_config_check()  # and a local-dir: / hf-hub: config.json is checked before the model is built

__version__ = '0.1.0'
