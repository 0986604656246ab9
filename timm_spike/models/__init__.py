from ._base import SpikingNet, describe_mismatches, state_dict_mismatches
from .spikingformer import *
from .spikformer import *
from .spike_driven import *
from .qkformer import *
from .sew_resnet import *
