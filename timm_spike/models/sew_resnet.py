"""SEW-ResNet (spikingjelly 2.x model zoo) with timm's model API.

Fang et al., "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021, arXiv 2102.04159.
Spike-element-wise residual blocks: a block's output is g(spikes of the residual branch, shortcut spikes),
with g = ADD (the paper's best; outputs are spike counts, not binary), AND or IAND. The stem and residual
stages are spikingjelly's own (``spikingjelly.activation_based.model.sew_resnet``), built by its
``SEWResNet`` and adopted here with their names (``conv1``, ``layer1``..``layer4``, ``fc`` as in timm's and
torchvision's ResNets), so a checkpoint of the zoo model loads unchanged.

The zoo leaves the neuron to the caller: here it is timm_spike's LIF (``create_lif``), so ``lif_cfg`` applies
in full (the paper used IF neurons on ImageNet). Those neurons start from rest at every call, so gradient
checkpointing is safe and supported (per residual block).

``stem`` picks the input layout: 'imagenet' (spikingjelly's 7x7/2 conv + 3x3/2 max-pool, 224x224 -> 7x7) or
'cifar' (one 3x3/1 conv, no max-pool, 32x32 -> 4x4), the usual ResNet layout for small images.

Feature levels (as timm's ResNets): the stem's spikes (before the max-pool), then the four residual stages.
"""
import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer
from spikingjelly.activation_based.model import sew_resnet as sj_sew
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import generate_default_cfgs, register_model

from ..layers import LIFConfig, create_lif, device_scope
from ._zoo import IMAGENET_CFG, ZooSpikingNet, create_zoo_model, run_once_on_direct_input, zoo_cfg

__all__ = ['SEWResNet']

_BLOCKS = {'basic': sj_sew.BasicBlock, 'bottleneck': sj_sew.Bottleneck}
CONNECTS = ('ADD', 'AND', 'IAND')
STEMS = ('imagenet', 'cifar')


class SEWResNet(ZooSpikingNet):
    """SEW-ResNet with timm's model API (``forward_features`` batch-first, ``forward_features_seq`` time-major)."""
    family = 'sew_resnet'
    head_name = 'fc'

    def __init__(
            self,
            layers: Sequence[int] = (2, 2, 2, 2),
            block: str = 'basic',
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            cnf: str = 'ADD',
            stem: str = 'imagenet',
            T: int = 4,
            readout: str = 'mean',
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            drop_rate: float = 0.,
            zero_init_residual: bool = False,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            layers: Residual blocks in each of the four stages ((2, 2, 2, 2) is SEW-ResNet-18).
            block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50 and deeper).
            img_size: Input image size.
            in_chans: Number of input channels.
            num_classes: Head outputs (classes, or the embedding width of a CLIP projection); 0 for no head.
            global_pool: 'avg' (mean over positions) or '' (no pooling; needs num_classes=0).
            cnf: Spike-element-wise connection, 'ADD', 'AND' or 'IAND'.
            stem: 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3/1 conv, no pool).
            T: Time steps (any integer >= 1).
            readout: Combination over time, 'mean' or 'weighted'.
            lif_cfg: LIF parameters of every neuron (timm_spike.layers.LIFConfig or a dict).
            drop_rate: Dropout before the head.
            zero_init_residual: Zero the last BN of each residual branch (spikingjelly's option).
            device: Device of the parameters and buffers (``'meta'``: none allocated; ``to_empty`` later).
            dtype: Floating point type of the parameters and buffers.
        """
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f'Unknown block {block!r}; choose one of {sorted(_BLOCKS)}')
        if cnf not in CONNECTS:
            raise ValueError(f'Unknown cnf {cnf!r}; choose one of {CONNECTS}')
        if stem not in STEMS:
            raise ValueError(f'Unknown stem {stem!r}; choose one of {STEMS}')
        if len(layers) != 4:
            raise ValueError(f'layers must give the blocks of four stages, got {tuple(layers)}')
        self.lif_cfg = LIFConfig.from_any(lif_cfg)
        self.stem = stem
        self.cnf = cnf
        with device_scope(device):
            zoo = sj_sew.SEWResNet(
                _BLOCKS[block], list(layers), num_classes=1, zero_init_residual=zero_init_residual, cnf=cnf,
                spiking_neuron=functools.partial(create_lif, self.lif_cfg))
            self.conv1 = zoo.conv1
            if stem == 'cifar' or in_chans != 3:  # the zoo's stem is hard-wired to 3 channels and 7x7/2
                k, s = (3, 1) if stem == 'cifar' else (7, 2)
                self.conv1 = layer.Conv2d(in_chans, zoo.conv1.out_channels, kernel_size=k, stride=s,
                                          padding=k // 2, bias=False)
                nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')  # as the zoo's
            run_once_on_direct_input(self.conv1)
            self.bn1 = zoo.bn1
            self.sn1 = zoo.sn1
            self.maxpool = zoo.maxpool if stem == 'imagenet' else nn.Identity()
            self.layer1, self.layer2, self.layer3, self.layer4 = zoo.layer1, zoo.layer2, zoo.layer3, zoo.layer4
            functional.set_step_mode(self, 'm')
            self.level_modules = [('conv1', 'bn1', 'sn1'), ('maxpool', 'layer1'), ('layer2',), ('layer3',),
                                  ('layer4',)]
            expansion = _BLOCKS[block].expansion
            self.level_channels = [zoo.conv1.out_channels] + [64 * 2 ** i * expansion for i in range(4)]
            stem_stride = 1 if stem == 'cifar' else 2
            self.level_reductions = [stem_stride] + [stem_stride * (2 if stem == 'imagenet' else 1) * 2 ** i
                                                     for i in range(4)]
            self._init_api(img_size, in_chans, num_classes, global_pool, zoo.fc.in_features, T, readout, drop_rate,
                           dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')



def _create_sew_resnet(variant: str, pretrained: bool = False, **kwargs) -> SEWResNet:
    # features_only: every level, as timm's ResNets
    return create_zoo_model(SEWResNet, variant, pretrained, default_out_indices=(0, 1, 2, 3, 4), **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return zoo_cfg('conv1', 'fc', interpolation='bilinear', **kwargs)


default_cfgs = generate_default_cfgs({
    'sew_resnet18': _cfg(**dict(IMAGENET_CFG, pool_size=(7, 7))),
    'sew_resnet34': _cfg(**dict(IMAGENET_CFG, pool_size=(7, 7))),
    'sew_resnet18_cifar': _cfg(pool_size=(4, 4)),
    # a SpikeCLIP image tower: CLIP-normalised 32x32 images, the head is the 512-d projection
    'sew_resnet18_clip': _cfg(num_classes=512, pool_size=(4, 4), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def sew_resnet18(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-18 (ADD), ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(layers=(2, 2, 2, 2), block='basic', cnf='ADD')
    return _create_sew_resnet('sew_resnet18', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet34(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-34 (ADD), ImageNet (224x224, T=4), spikingjelly's blocks."""
    model_args = dict(layers=(3, 4, 6, 3), block='basic', cnf='ADD')
    return _create_sew_resnet('sew_resnet34', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet18_cifar(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-18 (ADD), CIFAR layout (3x3 stem, no max-pool, 32x32, T=4), spikingjelly's blocks."""
    model_args = dict(layers=(2, 2, 2, 2), block='basic', cnf='ADD', stem='cifar', img_size=32, num_classes=10)
    return _create_sew_resnet('sew_resnet18_cifar', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet18_clip(pretrained: bool = False, **kwargs) -> SEWResNet:
    """A SpikeCLIP image tower on SEW-ResNet-18 (CIFAR layout, 32x32, T=4, 512-d projection head)."""
    model_args = dict(layers=(2, 2, 2, 2), block='basic', cnf='ADD', stem='cifar', img_size=32, num_classes=512,
                      T=4)
    return _create_sew_resnet('sew_resnet18_clip', pretrained=pretrained, **dict(model_args, **kwargs))
