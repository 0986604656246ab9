"""The spiking text towers of SpikeCLIP: the paper's spiking MLP and the spiking transformer it was compared with."""
from .base import TEXT_ARCHS, SpikingTextCfg, SpikingTextTower, init_embeddings_from_teacher
from .mlp import SpikingTextMLP
from .transformer import SpikingTextTransformer

__all__ = ['SpikingTextCfg', 'SpikingTextMLP', 'SpikingTextTower', 'SpikingTextTransformer', 'TEXT_ARCHS',
           'init_embeddings_from_teacher']
