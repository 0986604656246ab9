"""What the backbones adopted from spikingjelly's model zoo share.

spikingjelly 2.0's zoo models (Spikformer, Spike-driven Transformer, QKFormer, SEW-ResNet) are plain classifiers: a
``forward`` that returns logits, stateful neurons that must be reset between inputs, no way to swap the head.
Each family file (``spikformer.py``, ``spike_driven.py``, ``qkformer.py``, ``sew_resnet.py``) adopts the zoo's own
stems and blocks and names its feature levels (``level_modules``); ``ZooSpikingNet`` runs the trunk level by
level under the timm API of every spiking tower (``timm_spike.models._base.SpikingNet``) and adds what the zoo
needs: input checks and direct encoding (the first conv runs once, not T times), neurons that start from rest at
every call (``StatelessLIFNode``), gradient checkpointing per block, ``features_only`` and the zoo's cfgs.
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg

from ..layers import LIFConfig, StatelessLIFNode, checkpoint_module
from ..layers.guards import check_image
from ..layers.time import check_time_steps, encode_direct
from ._base import SpikingNet, check_global_pool, to_img_size

__all__ = ['ZooSpikingNet', 'check_zoo_lif', 'create_zoo_model', 'make_neurons_stateless', 'run_once_on_direct_input',
           'zoo_cfg', 'CIFAR_MEAN', 'CIFAR_STD', 'IMAGENET_CFG']

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# overrides of ``zoo_cfg``'s CIFAR defaults for the ImageNet variants
IMAGENET_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(14, 14), crop_pct=0.875,
                    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def zoo_cfg(first_conv: str, classifier: str = 'head', url: str = '', **kwargs) -> Dict[str, Any]:
    """A timm pretrained cfg with the zoo's CIFAR defaults (32x32, CIFAR mean/std, an 8x8 feature map); ``kwargs``
    override them."""
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': first_conv, 'classifier': classifier,
        'license': 'apache-2.0',
        **kwargs,
    }


def create_zoo_model(
        model_cls: type,
        variant: str,
        pretrained: bool = False,
        default_out_indices: Union[int, Tuple[int, ...]] = 3,
        **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a ``ZooSpikingNet``; ``features_only`` gives ``default_out_indices``
    unless ``out_indices`` is given (an int n: the last n feature levels)."""
    out_indices = kwargs.pop('out_indices', default_out_indices)
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def make_neurons_stateless(module: nn.Module) -> nn.Module:
    """Replace the zoo's ``neuron.LIFNode`` s (stateful: the potential carries over to the next call) with
    ``StatelessLIFNode`` s of the same parameters, which start every call from rest.

    Every forward is then independent of the previous one without a ``reset_net`` (which FX graphs and
    TorchScript would not replay), a recomputed block under gradient checkpointing starts from the same state as
    its first pass, and the neurons follow the process-wide LIF implementation switch (``set_lif_impl``).
    """
    for name, child in list(module.named_modules()):
        if type(child) is not neuron.LIFNode:
            continue
        new = StatelessLIFNode(
            tau=child.tau, decay_input=child.decay_input, v_threshold=child.v_threshold, v_reset=child.v_reset,
            surrogate_function=child.surrogate_function, detach_reset=child.detach_reset, step_mode='m',
            store_v_seq=child.store_v_seq)
        module.set_submodule(name, new)
    return module


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


@register_notrace_function  # FX: branches on the input's rank and size
def zoo_input_sequence(x: torch.Tensor, T: int, in_chans: int, img_size: Tuple[int, int],
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """[B, C, H, W] images (direct encoding, repeated T times) or [T, B, C, H, W] sequences -> checked sequence.

    Non-float and non-finite images and a sequence of another length than T are refused, other float dtypes
    converted to ``dtype`` (``timm_spike.layers.guards.check_image``).
    """
    x = check_image(x, T=T, dtype=dtype)
    if x.ndim == 4:
        x = encode_direct(x, T)
    elif x.ndim != 5:
        raise ValueError(f'Expected [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}')
    if tuple(x.shape[-2:]) != tuple(img_size) or x.shape[2] != in_chans:
        raise ValueError(f'Input {tuple(x.shape)} does not match the model input '
                         f'{in_chans}x{img_size[0]}x{img_size[1]}; resize the images '
                         f'(or build the model with img_size/in_chans)')
    return x


torch.fx.wrap('zoo_input_sequence')  # a leaf wherever it is called from (the forward is written in ``_base``)


class ZooSpikingNet(SpikingNet):
    """Base of the zoo wrappers: the zoo's trunk run level by level under ``SpikingNet``'s timm API.

    Subclasses build their trunk (inside ``device_scope(device)``), call ``_init_api`` and implement
    ``group_matcher``. ``level_modules`` names the modules of each feature level in order (level 0 the stem); the
    trunk runs them in that order, each [T, B, C, H, W] -> [T, B, C', H', W']; ``level_channels`` and
    ``level_reductions`` give each level's width and stride. ``head_name`` is the classifier attribute ('head', or
    'fc' where the zoo's and timm's ResNets use that name, so their checkpoints load unchanged).
    """
    family: str = 'model'
    level_modules: List[Tuple[str, ...]]
    level_channels: List[int]
    level_reductions: List[int]

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
            dtype: Optional[torch.dtype] = None,
    ):
        self.global_pool = check_global_pool(global_pool, num_classes)
        self.T = check_time_steps(T)
        self.img_size = to_img_size(img_size)
        make_neurons_stateless(self)
        self.in_chans = in_chans
        self._init_head(num_features, num_classes, self.T, readout, drop_rate)
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=names[-1])
            for names, c, r in zip(self.level_modules, self.level_channels, self.level_reductions)]
        if dtype is not None:
            self.to(dtype=dtype)

    def _levels(self) -> List[List[nn.Module]]:
        return [[self.get_submodule(n) for n in names] for names in self.level_modules]

    def _run_level(self, level: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for module in level:
            if not ckpt:
                x = module(x)
            else:  # per block, so a stage's recompute holds one block's activations at a time
                for blk in (module if isinstance(module, nn.Sequential) else [module]):
                    x = checkpoint_module(blk, x)
        return x

    def _input_dtype(self) -> torch.dtype:
        # the dtype images are converted to (the model's floating dtype)
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def _input_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images (direct encoding, repeated T times) or [T, B, C, H, W] -> checked sequence."""
        return zoo_input_sequence(x, self.T, self.in_chans, self.img_size, self._input_dtype())

    def _run_levels(self, x: torch.Tensor, stop: Optional[int] = None) -> Iterator[torch.Tensor]:
        for level in self._levels()[:stop]:
            x = self._run_level(level, x)
            yield x

    def _num_levels(self) -> int:
        return len(self.level_modules)

    def _prune_levels(self, max_index: int):
        # the levels after the last needed one become identities (their names stay in level_modules)
        for names in self.level_modules[max_index + 1:]:
            for name in names:
                self.set_submodule(name, nn.Identity())
