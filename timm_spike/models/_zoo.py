"""The timm API shared by the backbones adopted from spikingjelly's model zoo.

spikingjelly 2.0's zoo models (Spikformer, Spike-driven Transformer, QKFormer, SEW-ResNet) are plain classifiers: a
``forward`` that returns logits, stateful neurons that must be reset between inputs, no way to swap the head.
Each family file (``spikformer.py``, ``spike_driven.py``, ``qkformer.py``, ``sew_resnet.py``) adopts the zoo's own
stems and blocks and names its feature levels (``level_modules``); this base adds, once for all, what timm and
open_clip expect: input checks and direct encoding (the first conv runs once, not T times), neurons that start
from rest at every call (``StatelessLIFNode``), a readout over time that takes any T (``TemporalReadout``), a linear
head usable as SpikeCLIP's projection, ``forward_features`` (batch-first) / ``forward_features_seq`` (time-major),
``forward_intermediates`` / ``features_only`` / ``prune_intermediate_layers``, gradient checkpointing, timm's
``device=`` / ``dtype=`` arguments and the rest of timm's model API.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

from ..layers import LIFConfig, StatelessLIFNode, TemporalReadout, checkpoint_module, linear_like
from ..layers.guards import check_image
from ..layers.time import check_time_steps, encode_direct
from .spikingformer import resolve_global_pool

__all__ = ['ZooSpikingNet', 'check_zoo_lif', 'create_zoo_model', 'make_neurons_stateless', 'run_once_on_direct_input',
           'zoo_cfg', 'CIFAR_MEAN', 'CIFAR_STD', 'IMAGENET_CFG']

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

GLOBAL_POOLS = ('avg', '')

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


class ZooSpikingNet(nn.Module):
    """Base of the zoo wrappers: timm's head / readout / input / feature API around a spiking trunk.

    Subclasses build their trunk (inside ``device_scope(device)``), call ``_init_api`` and implement
    ``group_matcher``. ``level_modules`` names the modules of each feature level in order (level 0 the stem); the
    trunk runs them in that order, each [T, B, C, H, W] -> [T, B, C', H', W']; ``level_channels`` and
    ``level_reductions`` give each level's width and stride. ``head_name`` is the classifier attribute ('head', or 'fc' where the zoo's and timm's ResNets use
    that name, so their checkpoints load unchanged).
    """
    head_name: str = 'head'
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
        self.global_pool = resolve_global_pool('avg', 0, global_pool)
        self.T = check_time_steps(T)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(self.img_size) != 2 or any(not isinstance(s, int) or s < 1 for s in self.img_size):
            raise ValueError(f'img_size must be an int or (height, width) of positive ints, got {img_size!r}')
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        if num_classes and not self.global_pool:
            raise ValueError("global_pool='' gives unpooled [B, C, H, W] features and needs num_classes=0")
        make_neurons_stateless(self)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        self.readout = TemporalReadout(self.T, readout)
        self.head_drop = nn.Dropout(drop_rate)
        setattr(self, self.head_name, linear_like(self, num_features, num_classes))
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

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'readout.logits'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        # safe: the neurons start from rest at every call, so a recomputed block is the same block
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.global_pool = resolve_global_pool(self.global_pool, num_classes, global_pool)
        self.num_classes = num_classes
        setattr(self, self.head_name, linear_like(self, self.num_features, num_classes))

    def _input_dtype(self) -> torch.dtype:
        # the dtype images are converted to (the model's floating dtype)
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def forward_features_seq(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images (direct encoding, repeated T times) or [T, B, C, H, W] -> [T, B, D, H', W']."""
        x = zoo_input_sequence(x, self.T, self.in_chans, self.img_size, self._input_dtype())
        for level in self._levels():
            x = self._run_level(level, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-first feature map [B, D, H', W']: the time-major map read out over time."""
        return self.readout(self.forward_features_seq(x))

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, D, H, W] -> [T, B, D]: the mean over tokens (positions) at each time step."""
        return x.flatten(3).mean(3)

    def _pool_seq(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == 'avg':
            return self.readout(self.pool_tokens(x))
        return self.readout(x)  # unpooled maps read out over time, [B, C, H, W]

    def _pool_map(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(2) if self.global_pool == 'avg' else x

    def _head(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head on the batch-first map of ``forward_features`` or the time-major map of ``forward_features_seq``
        (``forward`` takes the time-major path; the two agree up to rounding where pooling is linear)."""
        return self._head(self._pool_seq(x) if x.ndim == 5 else self._pool_map(x), pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self._pool_seq(self.forward_features_seq(x)), pre_logits=False)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (batch-first, each level's map read out over time).

        Args:
            x: Input image tensor.
            indices: Take last n levels if int, all if None, select matching indices if sequence.
            norm: Unused (the models have no final norm).
            stop_early: Stop after the last desired intermediate.
            output_fmt: 'NCHW' or 'NLC'.
            intermediates_only: Only return intermediate features.

        Returns:
            The final batch-first features and the list of intermediates, or just the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        levels = self._levels()
        take_indices, max_index = feature_take_indices(len(levels), indices)
        if stop_early:
            levels = levels[:max_index + 1]
        intermediates = []
        x = zoo_input_sequence(x, self.T, self.in_chans, self.img_size, self._input_dtype())
        for i, level in enumerate(levels):
            x = self._run_level(level, x)
            if i in take_indices:
                y = self.readout(x)
                intermediates.append(y.flatten(2).transpose(1, 2) if output_fmt == 'NLC' else y)
        if intermediates_only:
            return intermediates
        return self.readout(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Replace the levels after the last needed one by identities (and optionally drop the head)."""
        take_indices, max_index = feature_take_indices(len(self.level_modules), indices)
        for names in self.level_modules[max_index + 1:]:
            for name in names:
                self.set_submodule(name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

