from .neuron import (
    LIF_IMPLS, LIFConfig, StatelessLIFNode, SURROGATES, create_lif, create_surrogate, is_spiking_neuron, set_lif_impl)
from .checkpoint import checkpoint_module, preserve_bn_running_stats
from .fused_lif import FusedLIFParams, lif_multi_step_fused, set_fused_compile
from .readout import READOUTS, TemporalReadout
from .time import check_time_steps, encode_direct
