"""Spikformer (spikingjelly 2.x model zoo) with timm's model API.

Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023, arXiv 2209.15425.
The tokenizer and blocks are spikingjelly's own (``spikingjelly.activation_based.model.spikformer``), with its
per-position LIF defaults (tau 2, hard reset, Sigmoid surrogate, attention LIF at threshold 0.5); this file adds
what timm and open_clip expect: ``forward_features`` / ``forward_head`` / ``reset_classifier``, a readout over
time that takes any T (``TemporalReadout``), a linear head usable as SpikeCLIP's projection, and a neuron reset
at every forward (spikingjelly's LIFNode keeps its membrane potential between calls).

Not provided: ``features_only`` / ``forward_intermediates`` and gradient checkpointing (a recomputed block
would restart its stateful neurons from the wrong potential).
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model.spikformer import SpikformerBlock, SpikformerPatchStem
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import LIFConfig, TemporalReadout
from ..layers.time import check_time_steps, encode_direct
from ._zoo import run_once_on_direct_input

__all__ = ['Spikformer']

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Spikformer(nn.Module):
    """Spikformer with timm's model API; time-major features [T, B, C, H, W] like ``Spikingformer``."""

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
        """
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"Unknown global_pool {global_pool!r}; choose 'avg' or ''")
        if LIFConfig.from_any(lif_cfg) != LIFConfig():
            raise ValueError('spikformer uses the LIF neurons of spikingjelly\'s model zoo (tau 2, threshold 1, '
                             'Sigmoid surrogate); lif_cfg cannot change them: use a spikingformer_* model for '
                             'other LIF parameters')
        self.T = check_time_steps(T)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % patch_size or s < patch_size for s in self.img_size):
            raise ValueError(f'img_size {self.img_size} must be a multiple of patch_size {patch_size}')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = SpikformerPatchStem(
            img_size_h=self.img_size[0], img_size_w=self.img_size[1], patch_size=patch_size,
            in_channels=in_chans, embed_dims=embed_dim)
        self.blocks = nn.Sequential(*[SpikformerBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        functional.set_step_mode(self, 'm')
        # the first conv + BN sees the same image at every step: compute it once (energy counted once)
        run_once_on_direct_input(self.patch_embed.stages[0].conv_bn)
        self.readout = TemporalReadout(self.T, readout)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes and not self.global_pool:
            raise ValueError("global_pool='' gives unpooled [B, C, H, W] features and needs num_classes=0")
        head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=.02)
            nn.init.zeros_(head.bias)
        return head

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'readout.logits'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^patch_embed', blocks=r'^blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError('spikformer cannot checkpoint its blocks: spikingjelly\'s stateful neurons '
                                      'would recompute from the wrong membrane potential')

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"Unknown global_pool {global_pool!r}; choose 'avg' or ''")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images (direct encoding, repeated T times) or [T, B, C, H, W] -> [T, B, D, H', W']."""
        if x.ndim == 4:
            x = encode_direct(x, self.T)
        elif x.ndim != 5:
            raise ValueError(f'Expected [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}')
        if tuple(x.shape[-2:]) != self.img_size or x.shape[2] != self.in_chans:
            raise ValueError(f'Input {tuple(x.shape)} does not match the model input '
                             f'{self.in_chans}x{self.img_size[0]}x{self.img_size[1]}; resize the images')
        # spikingjelly's LIFNode keeps its potential between calls: start every forward from rest
        functional.reset_net(self)
        return self.blocks(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.flatten(3).mean(3)  # T B C
            x = self.readout(x)
        else:
            x = x.mean(0)  # unpooled maps averaged over time, [B, C, H, W]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_spikformer(variant: str, pretrained: bool = False, **kwargs) -> Spikformer:
    if kwargs.pop('features_only', False):
        raise ValueError('spikformer does not support features_only (no forward_intermediates)')
    return build_model_with_cfg(Spikformer, variant, pretrained, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': 'patch_embed.stages.0.conv_bn.block.0', 'classifier': 'head',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'spikformer_4_384': _cfg(),
    'spikformer_8_384': _cfg(num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
                             mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    # a SpikeCLIP image tower: CLIP-normalised 32x32 images, the head is the 512-d projection
    'spikformer_clip': _cfg(num_classes=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def spikformer_4_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-4-384, CIFAR (32x32, T=4), spikingjelly's blocks."""
    model_args = dict(embed_dim=384, depth=4, num_heads=12, patch_size=4)
    return _create_spikformer('spikformer_4_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-8-384, ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=384, depth=8, num_heads=12, patch_size=16)
    return _create_spikformer('spikformer_8_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_clip(pretrained: bool = False, **kwargs) -> Spikformer:
    """A SpikeCLIP image tower on Spikformer-4-384 (8 heads, 32x32, T=4, 512-d projection head)."""
    model_args = dict(num_classes=512, embed_dim=384, depth=4, num_heads=8, patch_size=4, T=4)
    return _create_spikformer('spikformer_clip', pretrained=pretrained, **dict(model_args, **kwargs))
