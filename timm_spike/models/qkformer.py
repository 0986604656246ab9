"""QKFormer (spikingjelly 2.x model zoo) with timm's model API.

Zhou et al., "QKFormer: Hierarchical Spiking Transformer using Q-K Attention", NeurIPS 2024, arXiv 2403.16552.
Three stages of widths embed_dim/4, /2, /1, each opened by a spiking patch embedding with a deformed
shortcut; the first two stages use token-wise Q-K attention (a spike mask from the summed q, times k), the
last Spikformer's spiking self-attention. Stems and blocks are spikingjelly's own
(``spikingjelly.activation_based.model.qkformer``), built by its ``QKFormer`` and adopted here with their
names, so a checkpoint of the zoo model loads unchanged (``patch_size=16``). Its neurons keep the zoo's
defaults (tau 2, Sigmoid surrogate, attention LIF at threshold 0.5). The base of every spiking tower
(``timm_spike.models._base``, ``_zoo``) adds what timm and open_clip expect: ``forward_features`` /
``forward_head`` / ``reset_classifier``, a readout over time that takes any T, a linear head usable as SpikeCLIP's
projection, and neurons that start from rest at every call.

``patch_size`` is the total stride. 16 is spikingjelly's (ImageNet) layout: the first patch embedding
max-pools twice, 224x224 -> 56 -> 28 -> 14. 4 is the paper's CIFAR layout, 32x32 -> 32 -> 16 -> 8: the first
patch embedding keeps full resolution and has two 3x3 convs instead of three (``_cifar_stem`` removes the
zoo's max-pools and third conv). QKFormer-4-384 then has the published 6.74M parameters (100 classes); the
convs of spikingjelly's patch embeddings carry biases and its attention projections none, the reverse of the
QKFormer code, which leaves the count within 0.002M.

Feature levels: the three stages (patch embedding + blocks), at strides patch_size/4, /2, /1.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model import qkformer as sj_qk
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import register_notrace_module
from timm.models import generate_default_cfgs, register_model

from ..layers import LIFConfig, device_scope
from ._zoo import IMAGENET_CFG, ZooSpikingNet, check_zoo_lif, create_zoo_model, run_once_on_direct_input, zoo_cfg

__all__ = ['QKFormer']

# FX: the zoo's patch embeddings and blocks reshape by the input's [T, B, C, H, W] sizes
for _cls in (sj_qk._PatchEmbedInit, sj_qk._PatchEmbedStage, sj_qk._Block):
    register_notrace_module(_cls)


def _cifar_stem(stem: nn.Module) -> nn.Module:
    """The QKFormer CIFAR model's first patch embedding, made from spikingjelly 2.0.0's ``_PatchEmbedInit``.

    The zoo's is the ImageNet one: conv-BN-pool-LIF, conv-BN-pool-LIF, conv-BN-LIF, plus a 1x1/2 conv shortcut
    from the first LIF. The CIFAR model keeps full resolution and has no third conv: drop both max-pools and
    the third conv, and run the shortcut at stride 1.
    """
    names = ('pool1', 'pool2', 'conv3', 'bn3', 'lif3', 'shortcut')
    if not all(hasattr(stem, n) for n in names) or not isinstance(stem.shortcut[0], nn.Conv2d):
        raise RuntimeError("spikingjelly's QKFormer stem is not the one this CIFAR layout was written for "
                           "(spikingjelly 2.0.0's _PatchEmbedInit); use patch_size=16")
    for name in names[:-1]:
        setattr(stem, name, nn.Identity())
    stem.shortcut[0].stride = (1, 1)
    return stem


class QKFormer(ZooSpikingNet):
    """QKFormer with timm's model API (``forward_features`` batch-first, ``forward_features_seq`` time-major)."""
    family = 'qkformer'

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 32,
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            embed_dim: int = 384,
            depths: Sequence[int] = (1, 1, 2),
            num_heads: Union[int, Sequence[int]] = 8,
            mlp_ratio: float = 4.,
            qka_type: str = 'token',
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
            embed_dim: Width of the last stage (a multiple of 4; the stages are embed_dim/4, /2, /1 wide).
            depths: Blocks per stage (three values; the model name counts their sum).
            num_heads: Attention heads, one for all stages or one per stage.
            mlp_ratio: MLP hidden width / stage width.
            qka_type: Q-K attention mask of the first two stages, 'token' or 'channel'.
            patch_size: Total stride, 4 (CIFAR layout) or 16 (spikingjelly's ImageNet layout).
            T: Time steps (any integer >= 1).
            readout: Combination over time, 'mean' or 'weighted'.
            lif_cfg: Accepted for the SpikeCLIP interface; must equal the defaults (spikingjelly's neurons).
            drop_rate: Dropout before the head.
            device: Device of the parameters and buffers (``'meta'``: none allocated; ``to_empty`` later).
            dtype: Floating point type of the parameters and buffers.
        """
        super().__init__()
        check_zoo_lif(lif_cfg, 'qkformer')
        if patch_size not in (4, 16):
            raise ValueError(f'patch_size must be 4 (CIFAR layout) or 16 (ImageNet layout), got {patch_size}')
        heads = (num_heads,) * 3 if isinstance(num_heads, int) else tuple(num_heads)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        with device_scope(device):
            zoo = sj_qk.QKFormer(
                T=T, in_channels=in_chans, num_classes=1, embed_dims=embed_dim, num_heads=heads,
                depths=tuple(depths), mlp_ratio=mlp_ratio, qka_type=qka_type)
            self.patch_embed1 = zoo.patch_embed1 if patch_size == 16 else _cifar_stem(zoo.patch_embed1)
            self.stage1 = nn.Sequential(*zoo.stage1)
            self.patch_embed2 = zoo.patch_embed2
            self.stage2 = nn.Sequential(*zoo.stage2)
            self.patch_embed3 = zoo.patch_embed3
            self.stage3 = nn.Sequential(*zoo.stage3)
            run_once_on_direct_input(self.patch_embed1.conv1)
            functional.set_step_mode(self, 'm')
            self.level_modules = [(f'patch_embed{i}', f'stage{i}') for i in (1, 2, 3)]
            self.level_channels = [embed_dim // 4, embed_dim // 2, embed_dim]
            self.level_reductions = [patch_size // 4, patch_size // 2, patch_size]
            self._init_api(img_size, in_chans, num_classes, global_pool, embed_dim, T, readout, drop_rate, dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed1\.',
            blocks=r'^(?:patch_embed|stage)(\d+)' if coarse else [
                (r'^patch_embed(\d+)\.', (0,)),
                (r'^stage(\d+)\.(\d+)', None),
            ],
        )


def _cfg(**kwargs) -> Dict[str, Any]:
    return zoo_cfg('patch_embed1.conv1', **kwargs)



default_cfgs = generate_default_cfgs({
    'qkformer_4_384': _cfg(),
    'qkformer_10_384': _cfg(**IMAGENET_CFG),
    'qkformer_10_512': _cfg(**IMAGENET_CFG),
    # a SpikeCLIP image tower: CLIP-normalised 32x32 images, the head is the 512-d projection
    'qkformer_clip': _cfg(num_classes=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def qkformer_4_384(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer-4-384, CIFAR (32x32, T=4, depths 1-1-2, 8 heads), spikingjelly's blocks."""
    model_args = dict(embed_dim=384, depths=(1, 1, 2), num_heads=8, patch_size=4)
    return create_zoo_model(QKFormer, 'qkformer_4_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_10_384(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer-10-384, ImageNet (224x224, T=4, depths 1-2-7), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=384, depths=(1, 2, 7), num_heads=6,
                      patch_size=16)
    return create_zoo_model(QKFormer, 'qkformer_10_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_10_512(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer-10-512, ImageNet (224x224, T=4, depths 1-2-7), spikingjelly's blocks."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=512, depths=(1, 2, 7), num_heads=8,
                      patch_size=16)
    return create_zoo_model(QKFormer, 'qkformer_10_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_clip(pretrained: bool = False, **kwargs) -> QKFormer:
    """A SpikeCLIP image tower on QKFormer-4-384 (CIFAR layout, 32x32, T=4, 512-d projection head)."""
    model_args = dict(num_classes=512, embed_dim=384, depths=(1, 1, 2), num_heads=8, patch_size=4, T=4)
    return create_zoo_model(QKFormer, 'qkformer_clip', pretrained=pretrained, **dict(model_args, **kwargs))
