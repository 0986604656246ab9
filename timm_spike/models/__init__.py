from .spikingformer import *
from .spikformer import *
