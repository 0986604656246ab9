"""Spike-driven Transformer (spikingjelly 2.x model zoo) with timm's model API.

Yao et al., "Spike-driven Transformer", NeurIPS 2023, arXiv 2307.01694.
The spiking patch embedding and the blocks (Spike-Driven Self-Attention: q * sum_tokens(k * v), no matmul
of two spike tensors; membrane-shortcut MLP) are spikingjelly's own
(``spikingjelly.activation_based.model.spike_driven_transformer``), built by its ``SpikeDrivenTransformer``
and adopted here with their names, so a checkpoint of the zoo model loads unchanged. Its neurons keep the
zoo's defaults (tau 2, Sigmoid surrogate, attention LIF at threshold 0.5). The base of every spiking tower
(``timm_spike.models._base``, ``_zoo``) adds what timm and open_clip expect: ``forward_features`` /
``forward_head`` / ``reset_classifier``, a readout over time that takes any T, a linear head usable as SpikeCLIP's
projection, and neurons that start from rest at every call.

The head follows the paper: mean over tokens -> LIF (``head_lif``) -> readout over T -> linear, so the
pooled features are firing rates. ``patch_size`` picks the stem's max-pools: 4 (two pools, 32x32 -> 8x8, the
CIFAR layout) or 16 (four pools, 224x224 -> 14x14, the ImageNet layout).

Feature levels: the patch embedding, then every block (all at the stem's stride). ``forward_head`` on the
batch-first map of ``forward_features`` cannot replay the head LIF step by step (the map is already read out over
time): it presents the time-averaged pooled features at each of the T steps. ``forward`` and ``forward_head`` on
the time-major map of ``forward_features_seq`` run the paper's head.
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model import spike_driven_transformer as sj_sdt
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import register_notrace_module
from timm.models import generate_default_cfgs, register_model

from ..layers import LIFConfig, device_scope, encode_direct
from ._zoo import IMAGENET_CFG, ZooSpikingNet, check_zoo_lif, create_zoo_model, run_once_on_direct_input, zoo_cfg

__all__ = ['SpikeDrivenTransformer']

# FX: the zoo's patch embedding and blocks reshape by the input's [T, B, C, H, W] sizes
register_notrace_module(sj_sdt._PatchEmbed)
register_notrace_module(sj_sdt._Block)

# patch_size -> spikingjelly's pooling_stat (one '1' per 3x3/2 max-pool in the four stem stages, last ones first)
_POOLING = {1: '0000', 2: '0001', 4: '0011', 8: '0111', 16: '1111'}


class SpikeDrivenTransformer(ZooSpikingNet):
    """Spike-driven Transformer (v1) with timm's model API (``forward_features`` batch-first, ``forward_features_seq``
    time-major)."""
    family = 'sdt'

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 32,
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            embed_dim: int = 512,
            depth: int = 2,
            num_heads: int = 8,
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
            embed_dim: Width of the tokens (a multiple of 8 and of num_heads: the stem widens in four steps).
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width / embed_dim.
            patch_size: Stem stride, 1, 2, 4 (CIFAR layout), 8 or 16 (ImageNet layout): 3x3/2 max-pools.
            T: Time steps (any integer >= 1).
            readout: Combination over time, 'mean' or 'weighted'.
            lif_cfg: Accepted for the SpikeCLIP interface; must equal the defaults (spikingjelly's neurons).
            drop_rate: Dropout before the head.
            device: Device of the parameters and buffers (``'meta'``: none allocated; ``to_empty`` later).
            dtype: Floating point type of the parameters and buffers.
        """
        super().__init__()
        check_zoo_lif(lif_cfg, 'sdt')
        if patch_size not in _POOLING:
            raise ValueError(f'patch_size must be one of {sorted(_POOLING)} (the stem max-pools), got {patch_size}')
        if embed_dim % 8:
            raise ValueError(f'embed_dim must be a multiple of 8 (the stem widens in four steps), got {embed_dim}')
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        with device_scope(device):
            zoo = sj_sdt.SpikeDrivenTransformer(
                T=T, in_channels=in_chans, num_classes=1, embed_dims=embed_dim, num_heads=num_heads, depths=depth,
                mlp_ratio=mlp_ratio, pooling_stat=_POOLING[patch_size])
            self.patch_embed = zoo.patch_embed
            self.blocks = nn.Sequential(*zoo.blocks)
            self.head_lif = zoo.head_lif  # the paper spikes the pooled tokens before the classifier
            run_once_on_direct_input(self.patch_embed.stages[0][0])
            functional.set_step_mode(self, 'm')
            self.level_modules = [('patch_embed',)] + [(f'blocks.{i}',) for i in range(depth)]
            self.level_channels = [embed_dim] * (depth + 1)
            self.level_reductions = [patch_size] * (depth + 1)
            self._init_api(img_size, in_chans, num_classes, global_pool, embed_dim, T, readout, drop_rate, dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^patch_embed', blocks=r'^blocks\.(\d+)')

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_lif(x.flatten(3).mean(3))

    def _pool_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool != 'avg':
            return x
        # the per-step pooled features are gone from a batch-first map: present their time average at each step
        return self.readout(self.head_lif(encode_direct(x.flatten(2).mean(2), self.T)))


def _cfg(**kwargs) -> Dict[str, Any]:
    return zoo_cfg('patch_embed.stages.0.0', **kwargs)



default_cfgs = generate_default_cfgs({
    'sdt_2_512': _cfg(),
    'sdt_8_384': _cfg(**IMAGENET_CFG),
    'sdt_8_512': _cfg(**IMAGENET_CFG),
    # a SpikeCLIP image tower: CLIP-normalised 32x32 images, the head is the 512-d projection
    'sdt_clip': _cfg(num_classes=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def sdt_2_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-2-512, CIFAR (32x32, T=4), spikingjelly's blocks."""
    model_args = dict(embed_dim=512, depth=2, num_heads=8, patch_size=4)
    return create_zoo_model(SpikeDrivenTransformer, 'sdt_2_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_8_384(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-8-384, ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=384, depth=8, num_heads=8, patch_size=16)
    return create_zoo_model(SpikeDrivenTransformer, 'sdt_8_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_8_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """Spike-driven Transformer-8-512, ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=512, depth=8, num_heads=8, patch_size=16)
    return create_zoo_model(SpikeDrivenTransformer, 'sdt_8_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_clip(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """A SpikeCLIP image tower on Spike-driven Transformer-4-384 (8 heads, 32x32, T=4, 512-d projection)."""
    model_args = dict(num_classes=512, embed_dim=384, depth=4, num_heads=8, patch_size=4, T=4)
    return create_zoo_model(SpikeDrivenTransformer, 'sdt_clip', pretrained=pretrained, **dict(model_args, **kwargs))
