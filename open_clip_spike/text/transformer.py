"""A spiking transformer text tower for SpikeCLIP: the alternative the paper compared its spiking MLP with.

SpikeCLIP (Lv et al., 2023, arXiv 2310.06488) found a spiking MLP text encoder better than a spiking transformer
for short prompts. ``SpikingTextTransformer`` is that transformer, with the interface of ``SpikingTextMLP`` so a
config switch (``"arch": "transformer"`` in ``text_cfg``, see ``open_clip_spike.text.SpikingTextCfg``) is all it
takes to reproduce the comparison:

CLIP BPE tokens [B, L] -> token + position embedding [B, W, L] -> repeated over T time steps (direct encoding)
-> N spike-driven self-attention blocks on the tokens laid out as a 1 x L map [T, B, W, 1, L] -> mean over the
prompt's tokens [T, B, W] -> readout over T [B, W] -> Linear -> [B, D].

The blocks are timm_spike's Spikingformer blocks (``timm_spike.models.spikingformer.SpikingformerBlock``), the
block of the SpikeCLIP image tower, rather than spikingjelly's ``SpikformerBlock``: their neurons are the
project's ``StatelessLIFNode`` (every call starts from rest, so no reset is needed and gradient checkpointing
recomputes correctly), they take the model's ``lif_cfg`` and fused-LIF choice like the image tower, and every
branch starts with a LIF, so every matmul and conv inside a block takes spikes (spike-driven residual; the
Spikformer block's convs would take the real-valued residual and cost MACs).
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm_spike.layers import LIFConfig, TemporalReadout, checkpoint_module, encode_direct
from timm_spike.models.spikingformer import SpikingformerBlock

from .base import SpikingTextTower

__all__ = ['SpikingTextTransformer']

_logger = logging.getLogger(__name__)

# Spike rate assumed for the conv inputs at init (see init_weights).
_INIT_SPIKE_RATE = 0.05


class SpikingTextTransformer(SpikingTextTower):
    """Spiking transformer text encoder: [B, L] token ids -> [B, output_dim] float embedding.

    Pooling: the mean over the prompt's own tokens, start-of-text to end-of-text (the end-of-text token has
    CLIP's highest id, so it is found as the argmax, as open_clip's text pooling finds it); padding slots are
    left out. Not the end-of-text token alone, as CLIP pools: CLIP's causal attention makes that token the
    one that has seen the whole prompt, while this attention has no mask and no softmax (every token sees every
    token), and one token's spike-driven state is a coarse, quantised summary at small T; the mean over all
    of the prompt's tokens is finer, and it is how the Spikingformer image tower pools its tokens.

    Every prompt is padded to ``context_length`` and the padding slots take part in attention (no attention
    mask: Spikingformer's attention has none, and the slots are a fixed function of the prompt's length), so a
    prompt's embedding depends on the prompt alone. Neurons start from rest on every call (timm_spike's
    StatelessLIFNode), so it does not depend on what ran before either. The blocks hold BatchNorm layers: in
    training mode they normalise with the statistics of the batch, so a prompt's embedding depends on its
    batch; in eval mode (class embeddings, zero-shot) it does not. Locked blocks keep their BatchNorm
    statistics (``lock``).

    The blocks keep Spikingformer's attention constants (scale 0.125, threshold 0.5 of the LIF after q k^T v),
    which were set for 64 image tokens: over 20 text slots that LIF fires rarely at init (0-0.3% of the time
    with training-mode BatchNorm, against 0.3-3% in the image tower) until q, k and v learn through its
    surrogate gradient; ``attn_scale`` changes it.
    """

    def __init__(
            self,
            context_length: int = 20,
            vocab_size: int = 49408,
            width: int = 512,
            layers: int = 4,
            heads: int = 8,
            mlp_ratio: float = 4.,
            output_dim: int = 512,
            T: int = 4,
            readout: str = 'mean',
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            pad_id: int = 0,
            attn_scale: float = 0.125,
            attn_threshold: float = 0.5,
            drop_path_rate: float = 0.,
    ):
        """
        Args:
            context_length: Token slots (the tokenizer pads or truncates every prompt to this length).
            vocab_size: Size of the BPE vocabulary (49,408 for CLIP's).
            width: Token width (embedding and blocks).
            layers: Number of spiking self-attention blocks.
            heads: Attention heads (must divide ``width``).
            mlp_ratio: MLP hidden width / width.
            output_dim: Embedding width (the shared image-text space).
            T: Time steps.
            readout: Combination over time, 'mean' or 'weighted' (see timm_spike.layers.TemporalReadout).
            lif_cfg: LIF parameters (``LIFConfig`` or dict); None for the paper's defaults.
            pad_id: Token id used to pad inputs shorter than ``context_length``.
            attn_scale: Scale of the attention product (Spikingformer's 0.125).
            attn_threshold: Threshold of the LIF after the attention product (Spikingformer's 0.5).
            drop_path_rate: Stochastic depth rate of the blocks.
        """
        for name, value in (('layers', layers), ('heads', heads), ('mlp_ratio', mlp_ratio)):
            if not value > 0:
                raise ValueError(f'SpikingTextTransformer {name} must be > 0, got {value!r}')
        if width % heads:
            raise ValueError(f'SpikingTextTransformer width {width} must be divisible by heads {heads}; '
                             f'change text_cfg width or heads')
        super().__init__(context_length, vocab_size, width, output_dim, T, lif_cfg, pad_id)
        self.layers = int(layers)
        self.heads = int(heads)
        self.mlp_ratio = float(mlp_ratio)
        self._bn_locked_blocks = 0  # blocks whose BatchNorm statistics lock() froze
        dpr = [drop_path_rate * i / max(self.layers - 1, 1) for i in range(self.layers)]
        self.blocks = nn.Sequential(*[
            SpikingformerBlock(self.width, self.heads, self.mlp_ratio, attn_scale, attn_threshold, dpr[i],
                               self.lif_cfg)
            for i in range(self.layers)
        ])
        self.readout = TemporalReadout(self.T, readout)
        self.proj = nn.Linear(self.width, self.output_dim)
        self.init_weights()

    def init_weights(self):
        self.init_embeddings()
        # Every conv in a block takes sparse spikes. Scaled for unit-variance output at that rate, the LIFs
        # behind them fire even with BatchNorm at its initial (identity) statistics, i.e. an untrained tower in
        # eval mode is not silent; PyTorch's default init would leave them far below threshold.
        for m in self.blocks.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                fan_in = m.weight[0].numel()
                nn.init.normal_(m.weight, std=(fan_in * _INIT_SPIKE_RATE) ** -0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.proj.weight, std=self.width ** -0.5)
        nn.init.zeros_(self.proj.bias)

    def lock_groups(self) -> List[Sequence[nn.Parameter]]:
        # embeddings, each block, readout + projection
        groups = [[self.token_embedding.weight, self.pos_embed]]
        groups += [list(b.parameters()) for b in self.blocks]
        groups.append(list(self.readout.parameters()) + list(self.proj.parameters()))
        return groups

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> int:
        """Freeze the tower (open_clip's ``lock_text_tower`` interface).

        Args:
            unlocked_layers: Leave the last n of the layer groups (embeddings, each block, readout +
                projection) trainable.
            freeze_layer_norm: Also keep the BatchNorm statistics of the locked blocks fixed (their BatchNorm
                layers stay in eval mode when the model trains): the tower has no LayerNorm, and a frozen
                block whose statistics still moved would change its output.
        """
        n_locked = super().lock(unlocked_layers)
        self._bn_locked_blocks = min(max(n_locked - 1, 0), self.layers) if freeze_layer_norm else 0
        self.train(self.training)
        return n_locked

    def train(self, mode: bool = True) -> 'SpikingTextTransformer':
        super().train(mode)
        for block in self.blocks[:self._bn_locked_blocks]:
            block.eval()
        return self

    def embed(self, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] -> token + position embeddings [B, width, 1, context_length] and the prompt mask
        [B, context_length] (True from the start-of-text to the end-of-text token)."""
        text = self.pad_tokens(text)
        x = self.embed_tokens(text)
        positions = torch.arange(self.context_length, device=text.device)
        mask = positions <= text.argmax(dim=-1, keepdim=True)  # the end-of-text token has the highest id
        return x.transpose(1, 2).unsqueeze(2), mask

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, width, 1, L] -> direct encoding over T -> blocks -> token states [T, B, width, 1, L]."""
        x = encode_direct(x, self.T)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint_module(block, x)
            else:
                x = block(x)
        return x

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(text)
        x = self.forward_features(x).flatten(3)  # [T, B, W, L]
        m = mask[None, :, None, :].to(x.dtype)
        x = (x * m).sum(-1) / m.sum(-1)  # mean over the prompt's tokens, [T, B, W]
        return self.proj(self.readout(x))

    def extra_repr(self) -> str:
        return (f'context_length={self.context_length}, width={self.width}, layers={self.layers}, '
                f'heads={self.heads}, T={self.T}')
