"""Spikformer (spikingjelly 2.x model zoo) with timm's model API.

Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023, arXiv 2209.15425.
The tokenizer and blocks are spikingjelly's own (``spikingjelly.activation_based.model.spikformer``), with its
per-position LIF defaults (tau 2, hard reset, Sigmoid surrogate, attention LIF at threshold 0.5); timm's model
API comes from the base of every spiking tower (``timm_spike.models._base``, ``_zoo``): ``forward_features`` /
``forward_head`` / ``reset_classifier``, a readout over time that takes any T (``TemporalReadout``), a linear head
usable as SpikeCLIP's projection, and neurons that start from rest at every call (spikingjelly's LIFNode keeps
its membrane potential between calls).

Feature levels: the tokenizer, then every block (all at the tokenizer's stride).
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model.spikformer import SpikformerBlock, SpikformerPatchStem
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import register_notrace_module
from timm.models import generate_default_cfgs, register_model

from ..layers import LIFConfig, device_scope
from ._zoo import IMAGENET_CFG, ZooSpikingNet, check_zoo_lif, create_zoo_model, run_once_on_direct_input, zoo_cfg

__all__ = ['Spikformer']

# FX: the zoo's tokenizer and blocks check and unpack the input's [T, B, C, H, W] shape
register_notrace_module(SpikformerPatchStem)
register_notrace_module(SpikformerBlock)


class Spikformer(ZooSpikingNet):
    """Spikformer with timm's model API (``forward_features`` batch-first, ``forward_features_seq`` time-major)."""
    family = 'spikformer'

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 32,
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            embed_dim: int = 384,
            depth: int = 4,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            patch_size: int = 4,
            T: int = 4,
            readout: str = 'mean',
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            drop_rate: float = 0.,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            img_size: Input image size.
            in_chans: Number of input channels.
            num_classes: Head outputs (classes, or the embedding width of a CLIP projection); 0 for no head.
            global_pool: 'avg' (mean over tokens) or '' (no pooling; needs num_classes=0).
            embed_dim: Width of the tokens (a multiple of 8: the tokenizer widens in four steps).
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width / embed_dim.
            patch_size: Tokenizer stride, 4 (CIFAR layout) or 16 (ImageNet layout): spikingjelly's two stems.
            T: Time steps (any integer >= 1).
            readout: Combination over time, 'mean' or 'weighted'.
            lif_cfg: Accepted for the SpikeCLIP interface; must equal the defaults (spikingjelly's neurons).
            drop_rate: Dropout before the head.
            device: Device of the parameters and buffers (``'meta'``: none allocated; ``to_empty`` later).
            dtype: Floating point type of the parameters and buffers.
        """
        super().__init__()
        check_zoo_lif(lif_cfg, 'spikformer')
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % patch_size or s < patch_size for s in size):
            raise ValueError(f'img_size {size} must be a multiple of patch_size {patch_size}')
        self.embed_dim = embed_dim
        with device_scope(device):
            self.patch_embed = SpikformerPatchStem(
                img_size_h=size[0], img_size_w=size[1], patch_size=patch_size, in_channels=in_chans,
                embed_dims=embed_dim)
            self.blocks = nn.Sequential(*[SpikformerBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
            functional.set_step_mode(self, 'm')
            # the first conv + BN sees the same image at every step: compute it once (energy counted once)
            run_once_on_direct_input(self.patch_embed.stages[0].conv_bn)
            self.level_modules = [('patch_embed',)] + [(f'blocks.{i}',) for i in range(depth)]
            self.level_channels = [embed_dim] * (depth + 1)
            self.level_reductions = [patch_size] * (depth + 1)
            self._init_api(img_size, in_chans, num_classes, global_pool, embed_dim, T, readout, drop_rate, dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^patch_embed', blocks=r'^blocks\.(\d+)')


def _cfg(**kwargs) -> Dict[str, Any]:
    return zoo_cfg('patch_embed.stages.0.conv_bn.block.0', **kwargs)


default_cfgs = generate_default_cfgs({
    'spikformer_4_384': _cfg(),
    'spikformer_8_384': _cfg(**IMAGENET_CFG),
    # a SpikeCLIP image tower: CLIP-normalised 32x32 images, the head is the 512-d projection
    'spikformer_clip': _cfg(num_classes=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def spikformer_4_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-4-384, CIFAR (32x32, T=4), spikingjelly's blocks."""
    model_args = dict(embed_dim=384, depth=4, num_heads=12, patch_size=4)
    return create_zoo_model(Spikformer, 'spikformer_4_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-8-384, ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=384, depth=8, num_heads=12, patch_size=16)
    return create_zoo_model(Spikformer, 'spikformer_8_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_clip(pretrained: bool = False, **kwargs) -> Spikformer:
    """A SpikeCLIP image tower on Spikformer-4-384 (8 heads, 32x32, T=4, 512-d projection head)."""
    model_args = dict(num_classes=512, embed_dim=384, depth=4, num_heads=8, patch_size=4, T=4)
    return create_zoo_model(Spikformer, 'spikformer_clip', pretrained=pretrained, **dict(model_args, **kwargs))
