from .neuron import LIFConfig, StatelessLIFNode, SURROGATES, create_lif, create_surrogate, is_spiking_neuron
from .readout import READOUTS, TemporalReadout
from .time import check_time_steps, encode_direct
