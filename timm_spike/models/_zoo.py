"""The timm API shared by the backbones adopted from spikingjelly's model zoo.

spikingjelly 2.0's zoo models (Spike-driven Transformer, QKFormer, SEW-ResNet) are plain classifiers: a
``forward`` that returns logits, stateful neurons that must be reset between inputs, no way to swap the head.
Each family file (``spike_driven.py``, ``qkformer.py``, ``sew_resnet.py``) adopts the zoo's own stems and
blocks and implements ``forward_trunk``; this base adds, once for all three, what timm and open_clip expect:
input checks and direct encoding (the first conv runs once, not T times), a neuron reset at every forward,
a readout over time that takes any T (``TemporalReadout``), a linear head usable as SpikeCLIP's projection,
``reset_classifier`` and the rest of timm's model API.

Not provided: ``features_only`` / ``forward_intermediates``.
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg

from ..layers import LIFConfig, TemporalReadout
from ..layers.time import check_time_steps, encode_direct

__all__ = ['ZooSpikingNet', 'check_zoo_lif', 'create_zoo_model', 'run_once_on_direct_input', 'zoo_cfg',
           'CIFAR_MEAN', 'CIFAR_STD', 'IMAGENET_CFG']

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

GLOBAL_POOLS = ('avg', '')

# overrides of ``zoo_cfg``'s CIFAR defaults for the ImageNet variants
IMAGENET_CFG = dict(num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
                    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def zoo_cfg(first_conv: str, classifier: str = 'head', url: str = '', **kwargs) -> Dict[str, Any]:
    """A timm pretrained cfg with the zoo's CIFAR defaults (32x32, CIFAR mean/std); ``kwargs`` override them."""
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': first_conv, 'classifier': classifier,
        'license': 'apache-2.0',
        **kwargs,
    }


def create_zoo_model(model_cls: type, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a ``ZooSpikingNet``, refusing ``features_only`` with a clear error."""
    if kwargs.pop('features_only', False):
        raise ValueError(f'{variant} does not support features_only (no forward_intermediates); use '
                         f'forward_features, or a spikingformer_* model for per-block feature maps')
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


def check_zoo_lif(lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]], family: str):
    """Refuse LIF parameters that spikingjelly's zoo neurons cannot take.

    The zoo builds its neurons with per-position defaults (tau 2, threshold 1, 0.5 in the attention, Sigmoid
    surrogate); its ``spiking_neuron`` hook would apply one parameter set to every neuron and lose them.
    """
    if LIFConfig.from_any(lif_cfg) != LIFConfig():
        raise ValueError(f"{family} uses the LIF neurons of spikingjelly's model zoo (tau 2, threshold 1, 0.5 in "
                         f"the attention, Sigmoid surrogate); lif_cfg cannot change them: use a spikingformer_* or "
                         f"sew_resnet* model for other LIF parameters")


def _first_conv_pre_hook(conv: nn.Module, args: tuple):
    x = args[0]
    if x.ndim == 5 and x.shape[0] > 1 and x.stride(0) == 0:  # an expanded (direct-encoded) image
        conv._direct_T = x.shape[0]
        return (x[:1], *args[1:])
    return None


def _first_conv_hook(conv: nn.Module, args: tuple, out: torch.Tensor):
    T = conv.__dict__.pop('_direct_T', None)
    return None if T is None else out.expand(T, *out.shape[1:])


def run_once_on_direct_input(conv: nn.Module) -> nn.Module:
    """Make a zoo model's first (multi-step) conv run once on a direct-encoded image, not T times.

    The zoo's stems apply their first conv to all T copies of the repeated image. Its output is the same at
    every step, so it is computed for one step and expanded over T (the same values and gradients, T times
    fewer MACs), and the energy report counts it once, as for Spikingformer. Sequences that are not an
    expanded image (real [T, B, C, H, W] inputs) run as before.
    """
    conv.register_forward_pre_hook(_first_conv_pre_hook)
    conv.register_forward_hook(_first_conv_hook)
    return conv


def _check_global_pool(global_pool: str):
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"Unknown global_pool {global_pool!r}; choose 'avg' or ''")


class ZooSpikingNet(nn.Module):
    """Base of the zoo wrappers: timm's head / readout / input API around a spiking trunk.

    Subclasses build their trunk, call ``_init_api`` and implement ``forward_trunk`` ([T, B, C, H, W] in,
    [T, B, D, H', W'] out) and ``group_matcher``. ``head_name`` is the classifier attribute ('head', or 'fc'
    where the zoo's and timm's ResNets use that name, so their checkpoints load unchanged).
    """
    head_name: str = 'head'
    family: str = 'model'

    def _init_api(
            self,
            img_size: Union[int, Tuple[int, int]],
            in_chans: int,
            num_classes: int,
            global_pool: str,
            num_features: int,
            T: int,
            readout: str,
            drop_rate: float,
    ):
        _check_global_pool(global_pool)
        self.T = check_time_steps(T)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(self.img_size) != 2 or any(not isinstance(s, int) or s < 1 for s in self.img_size):
            raise ValueError(f'img_size must be an int or (height, width) of positive ints, got {img_size!r}')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features
        self.readout = TemporalReadout(self.T, readout)
        self.head_drop = nn.Dropout(drop_rate)
        setattr(self, self.head_name, self._make_head(num_classes))

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes and not self.global_pool:
            raise ValueError("global_pool='' gives unpooled [B, C, H, W] features and needs num_classes=0")
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=.02)
            nn.init.zeros_(head.bias)
        return head

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'readout.logits'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError(f"{self.family} cannot checkpoint its blocks: spikingjelly's stateful "
                                      f"neurons would recompute from the wrong membrane potential")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            _check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        setattr(self, self.head_name, self._make_head(num_classes))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] (checked, neurons at rest) -> [T, B, D, H', W']."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images (direct encoding, repeated T times) or [T, B, C, H, W] -> [T, B, D, H', W']."""
        if x.ndim == 4:
            x = encode_direct(x, self.T)
        elif x.ndim != 5:
            raise ValueError(f'Expected [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}')
        if tuple(x.shape[-2:]) != self.img_size or x.shape[2] != self.in_chans:
            raise ValueError(f'Input {tuple(x.shape)} does not match the model input '
                             f'{self.in_chans}x{self.img_size[0]}x{self.img_size[1]}; resize the images '
                             f'(or build the model with img_size/in_chans)')
        # spikingjelly's LIFNode keeps its potential between calls: start every forward from rest
        functional.reset_net(self)
        return self.forward_trunk(x)

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, D, H, W] -> [T, B, D]: the mean over tokens (positions)."""
        return x.flatten(3).mean(3)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = self.readout(self.pool_tokens(x))
        else:
            x = x.mean(0)  # unpooled maps averaged over time, [B, C, H, W]
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
