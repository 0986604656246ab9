"""The spiking MLP text tower of SpikeCLIP (Lv et al., 2023, arXiv 2310.06488).

CLIP BPE tokens [B, L] -> token + position embedding [B, L, W] -> the L token slots concatenated [B, L*W]
-> repeated over T time steps (direct encoding) -> LIF -> Linear -> LIF -> Linear -> readout over T -> [B, D].
The paper found this MLP better than a spiking transformer for short prompts; there is no attention mask
and no pooling, so the position of every token matters.
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm_spike.layers import LIFConfig, SpikingLinear, TemporalReadout, create_lif, encode_direct, spiking_mlp

from .base import SpikingTextTower

__all__ = ['SpikingTextMLP']

# Spike rate assumed for fc1's input at init (see init_weights).
_INIT_SPIKE_RATE = 0.05


class SpikingTextMLP(SpikingTextTower):
    """Spiking MLP text encoder: [B, L] token ids -> [B, output_dim] float embedding.

    The 20 token slots are concatenated (no attention, no pooling), so the position of every token matters; a
    prompt's embedding depends on the prompt alone, in any batch and training or eval mode (no BatchNorm).
    """

    def __init__(
            self,
            context_length: int = 20,
            vocab_size: int = 49408,
            width: int = 512,
            hidden_dim: int = 2048,
            output_dim: int = 512,
            T: int = 4,
            readout: str = 'mean',
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            pad_id: int = 0,
    ):
        """
        Args:
            context_length: Token slots (the tokenizer pads or truncates every prompt to this length).
            vocab_size: Size of the BPE vocabulary (49,408 for CLIP's).
            width: Token embedding width.
            hidden_dim: Width of the hidden spiking layer.
            output_dim: Embedding width (the shared image-text space).
            T: Time steps.
            readout: Combination over time, 'mean' or 'weighted' (see timm_spike.layers.TemporalReadout).
            lif_cfg: LIF parameters (``LIFConfig`` or dict); None for the paper's defaults.
            pad_id: Token id used to pad inputs shorter than ``context_length``.
        """
        super().__init__(context_length, vocab_size, width, output_dim, T, lif_cfg, pad_id)
        if not hidden_dim > 0:
            raise ValueError(f'SpikingTextMLP hidden_dim must be > 0, got {hidden_dim!r}')
        self.hidden_dim = int(hidden_dim)
        self.lif1 = create_lif(self.lif_cfg)
        self.fc1 = nn.Linear(self.context_length * self.width, self.hidden_dim)
        self.lif2 = create_lif(self.lif_cfg)
        self.fc2 = nn.Linear(self.hidden_dim, self.output_dim)
        self.readout = TemporalReadout(self.T, readout)
        self.init_weights()

    def init_weights(self):
        self.init_embeddings()
        # fc1 takes sparse spikes (5-10% fire at init): PyTorch's default init would give the second LIF
        # inputs far below threshold (it stays silent and every prompt maps to fc2's bias), so scale fc1 for
        # unit-variance output at that rate.
        nn.init.normal_(self.fc1.weight, std=(self.fc1.in_features * _INIT_SPIKE_RATE) ** -0.5)
        nn.init.zeros_(self.fc1.bias)
        self.fc2.reset_parameters()

    def lock_groups(self) -> List[Sequence[nn.Parameter]]:
        # embeddings, fc1, fc2 + readout
        return [
            [self.token_embedding.weight, self.pos_embed],
            list(self.fc1.parameters()),
            list(self.fc2.parameters()) + list(self.readout.parameters()),
        ]

    def embed(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> concatenated token + position embeddings [B, context_length * width]."""
        return self.embed_tokens(self.pad_tokens(text)).flatten(1)

    def _layer1(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.lif1(x))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = encode_direct(self.embed(text), self.T)  # [T, B, L*W]: the same input at every step
        if isinstance(self.fc1, SpikingLinear):  # the inference form (fuse): both layers in one event-driven pass
            return self.readout(spiking_mlp(self.fc1, self.fc2, x))
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            # the first layer holds the [T, B, L*W] input and its spikes: recomputing it saves the most memory
            x = checkpoint(self._layer1, x, use_reentrant=False)
        else:
            x = self._layer1(x)
        x = self.fc2(self.lif2(x))  # [T, B, D]
        return self.readout(x)

    @torch.no_grad()
    def fuse(self) -> 'SpikingTextMLP':
        """Switch to the inference form in place and return the tower (``timm.utils.reparameterize_model`` calls it
        on a copy): each neuron and the linear layer it feeds become one event-driven ``SpikingLinear``
        (``timm_spike.layers.set_spike_kernel`` picks its kernel). Parameter names and values are unchanged."""
        for lif, fc in (('lif1', 'fc1'), ('lif2', 'fc2')):
            if not isinstance(getattr(self, fc), SpikingLinear):
                layer = getattr(self, fc)
                setattr(self, fc, SpikingLinear(getattr(self, lif), layer.weight, layer.bias))
                setattr(self, lif, nn.Identity())
        return self

    def extra_repr(self) -> str:
        return f'context_length={self.context_length}, width={self.width}, T={self.T}'
