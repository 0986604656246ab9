from .spikingformer import *
