from .config import (
    LIF_IMPLS, LIF_IMPL_ENV, SPIKE_KERNELS, SPIKE_KERNEL_ENV, get_lif_impl, get_spike_kernel, lif_impl, set_lif_impl,
    set_spike_kernel, spike_kernel, use_fused_lif)
from .neuron import LIFConfig, StatelessLIFNode, SURROGATES, create_lif, create_surrogate, is_spiking_neuron
from .checkpoint import checkpoint_module, preserve_bn_running_stats
from .fused_lif import FusedLIFParams, lif_multi_step_fused, set_fused_compile
from .readout import READOUTS, TemporalReadout
from .time import check_time_steps, encode_direct
from .fx import SPIKING_LEAF_MODULES
from .factory import device_scope, linear_like
from .spike_layers import (
    FoldedConv2d, SpikingConv2d, SpikingLinear, fold_bn, inference_form, is_inference_form, spike_counts, spiking_mlp)
