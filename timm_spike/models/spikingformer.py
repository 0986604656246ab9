""" Spikingformer: spike-driven residual learning for Transformer-based SNNs

A timm implementation of
    `Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking Neural Network`
    - https://arxiv.org/abs/2304.11954 (Zhou et al., 2023)
and of the SpikeCLIP image encoder built on it
    `SpikeCLIP: A Contrastive Language-Image Pretrained Spiking Neural Network`
    - https://arxiv.org/abs/2310.06488 (Lv et al., 2023)

Tensors inside the network are time-major, [T, B, C, H, W]. A [B, C, H, W] image is direct-encoded
(presented at each of the T time steps); a [T, B, C, H, W] input is taken as an already encoded sequence.
Neurons are spikingjelly 2.x multi-step LIF neurons that start every call from rest, so each forward is
independent of the previous one. ``forward_features_seq`` returns the time-major map; ``forward_features`` the
batch-first map timm's API expects ([B, C, H, W], the map read out over time), which ``forward_head`` takes.

Where the two reference codes differ, this file follows Spikingformer and keeps the other behind a flag:
- ``pool_order='spike'`` (default): LIF -> MaxPool -> Conv in the tokenizer, pooling spikes (Spikingformer);
  ``'real'``: MaxPool -> LIF, pooling the real-valued BN output (the SpikeCLIP code).
- readout over time: the mean (Spikingformer) or a normalised learned weighting (``readout='weighted'``);
  the SpikeCLIP code's un-normalised weights, fixed to T=4, are not reproduced.

One module, longer than the house's ~500 lines, as timm keeps a family: blocks, their inference forms, the model,
the checkpoint filter, cfgs and registrations, read top to bottom.
"""
import logging
import re
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import register_notrace_function, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from timm_spike.layers import LIFConfig, check_time_steps, checkpoint_module, create_lif, device_scope, encode_direct
from timm_spike.layers.guards import check_image, check_state_dict_dtypes
from timm_spike.layers.spike_layers import FoldedConv2d, SpikingConv2d, SpikingLinear, fold_bn, spiking_mlp

from ._base import (
    SpikingNet, check_global_pool, describe_mismatches, state_dict_mismatches, to_img_size)

__all__ = ['Spikingformer', 'SpikingTokenizer', 'SpikingSelfAttention', 'SpikingMLP', 'SpikingformerBlock',
           'FusedSpikingSelfAttention', 'FusedSpikingMLP']

_logger = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# Tokenizer layouts: which of the 5 conv stages get a stride-2 max-pool on their input.
STEM_POOL_STAGES = {
    'cifar': (3, 4),  # 32x32 -> 8x8 = 64 tokens
    # the same 64 tokens with the pools one stage earlier: the two widest 3x3 convs run at a quarter of the
    # positions (0.45x the stem's FLOPs), for small towers whose cost is mostly the stem (SpikeCLIP-Tiny)
    'cifar_light': (2, 3),
    'imagenet': (1, 2, 3, 4),  # 224x224 -> 14x14 = 196 tokens
}
POOL_ORDERS = ('spike', 'real')


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # timm's DropPath drops along dim 0, which is time here; drop whole samples (dim 1) at every step instead.
    if p == 0. or not training:
        return x
    keep = 1. - p
    mask = x.new_empty((1, x.shape[1]) + (1,) * (x.ndim - 2)).bernoulli_(keep)
    return x * mask.div_(keep)


@register_notrace_function  # FX: branches on the input's rank and size
def image_to_sequence(
        x: torch.Tensor,
        in_chans: int,
        img_size: Tuple[int, int],
        stride: int,
        dynamic_img_size: bool,
        T: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Check the input of a Spikingformer; return [T', B, C, H, W], T' = 1 for a (direct-encoded) image batch.

    Non-float and non-finite images and a sequence of another length than T are refused, other float dtypes
    converted to the model's (``timm_spike.layers.guards.check_image``).
    """
    x = check_image(x, T=T, dtype=dtype)
    if x.ndim == 4:
        x = x.unsqueeze(0)
    elif x.ndim != 5:
        raise ValueError(
            f'Expected an image batch [B, C, H, W] or an encoded sequence [T, B, C, H, W], got shape {tuple(x.shape)}')
    if x.shape[2] != in_chans:
        raise ValueError(f'Expected {in_chans} input channels, got {x.shape[2]} (input shape {tuple(x.shape)})')
    H, W = x.shape[-2:]
    if dynamic_img_size:
        _check_size(H, stride, 'Input height')
        _check_size(W, stride, 'Input width')
    elif (H, W) != tuple(img_size):
        raise ValueError(
            f'Input size {H}x{W} does not match the model input size {img_size[0]}x{img_size[1]}; '
            f'resize the images (timm.data.resolve_model_data_config + create_transform do it) '
            f'or build the model with dynamic_img_size=True')
    return x


# the model's forward is written in ``_base``; FX's autowrap only sees the globals of the module a traced forward
# is defined in, so the function is also wrapped by name, which holds wherever it is called from
torch.fx.wrap('image_to_sequence')


def _check_size(size: int, stride: int, what: str):
    if size < stride or size % stride:
        raise ValueError(
            f'{what} {size} is not supported: the spiking tokenizer downsamples by {stride}, '
            f'so height and width must be positive multiples of {stride}')


@register_notrace_function  # FX: branches on the number of time steps
def expand_direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """A one-step sequence (a direct-encoded image) repeated over T steps; any other sequence as it is."""
    if x.shape[0] == 1 and T > 1:
        return encode_direct(x[0], T)
    return x


class TokenizerStage(nn.Module):
    """[LIF] -> [MaxPool] -> Conv3x3 -> BN (or MaxPool before LIF with pool_order='real')."""

    def __init__(self, in_chs: int, out_chs: int, spike_input: bool, pool: bool, pool_order: str, lif_cfg: LIFConfig):
        super().__init__()
        self.pool_order = pool_order
        self.lif = create_lif(lif_cfg) if spike_input else None
        self.pool = layer.MaxPool2d(kernel_size=3, stride=2, padding=1, step_mode='m') if pool else None
        self.conv = layer.Conv2d(in_chs, out_chs, kernel_size=3, stride=1, padding=1, bias=False, step_mode='m')
        self.bn = layer.BatchNorm2d(out_chs, step_mode='m')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None and self.pool_order == 'real':
            x = self.pool(x)
        if self.lif is not None:
            x = self.lif(x)
        if self.pool is not None and self.pool_order == 'spike':
            x = self.pool(x)
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Inference form (``timm.utils.reparameterize_model``): BatchNorm folded into the convolution; a stage fed
        by spikes becomes one event-driven ``SpikingConv2d`` (neuron, pool and convolution)."""
        weight, bias = fold_bn(self.conv.weight, self.conv.bias, self.bn)
        if self.lif is None:
            if self.pool is not None:
                raise NotImplementedError('a pooled first tokenizer stage has no inference form')
            return FoldedConv2d(weight, bias, padding=1)
        return SpikingConv2d(self.lif, weight, bias, pool=self.pool_order if self.pool is not None else None)


class SpikingTokenizer(nn.Module):
    """Spiking tokenizer (Spikingformer's stem): 5 conv stages, widths C/8, C/4, C/2, C, C."""

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 384,
            pool_stages: Sequence[int] = STEM_POOL_STAGES['cifar'],
            pool_order: str = 'spike',
            lif_cfg: Optional[LIFConfig] = None,
    ):
        super().__init__()
        if pool_order not in POOL_ORDERS:
            raise ValueError(f'Unknown pool_order {pool_order!r}; choose one of {POOL_ORDERS}')
        if embed_dim % 8:
            raise ValueError(f'embed_dim must be divisible by 8 for the tokenizer, got {embed_dim}')
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim, embed_dim]
        self.stages = nn.ModuleList([
            TokenizerStage(widths[i], widths[i + 1], spike_input=i > 0, pool=i in pool_stages,
                           pool_order=pool_order, lif_cfg=lif_cfg)
            for i in range(5)
        ])
        self.stride = 2 ** len(pool_stages)

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        # x: [T', B, C, H, W]. A direct-encoded image arrives as T'=1: the first stage (conv + BN, no
        # neuron) gives the same result at every step, so it runs once and is then repeated T times.
        x = expand_direct(self.stages[0](x), T)
        for stage in self.stages[1:]:
            x = stage(x)
        return x


@register_notrace_module  # FX: a time-folding module (reshapes by the input's [T, B, C, H, W] sizes)
class SpikingSelfAttention(nn.Module):
    """Spiking self-attention: q, k, v are spikes, no softmax; attn = q (k^T v) * scale."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_scale: float = 0.125,
            attn_threshold: float = 0.5,
            lif_cfg: Optional[LIFConfig] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = attn_scale
        self.in_lif = create_lif(lif_cfg)
        for n in ('q', 'k', 'v'):
            setattr(self, f'{n}_conv', layer.Conv1d(dim, dim, kernel_size=1, bias=False, step_mode='m'))
            setattr(self, f'{n}_bn', layer.BatchNorm1d(dim, step_mode='m'))
            setattr(self, f'{n}_lif', create_lif(lif_cfg))
        self.attn_lif = create_lif(lif_cfg, v_threshold=attn_threshold)
        self.proj_conv = layer.Conv1d(dim, dim, kernel_size=1, step_mode='m')
        self.proj_bn = layer.BatchNorm1d(dim, step_mode='m')

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, N = x.shape
        return x.reshape(T, B, self.num_heads, C // self.num_heads, N).transpose(-1, -2)  # T B h N d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        x = self.in_lif(x).flatten(3)  # T B C N
        q = self._heads(self.q_lif(self.q_bn(self.q_conv(x))))
        k = self._heads(self.k_lif(self.k_bn(self.k_conv(x))))
        v = self._heads(self.v_lif(self.v_bn(self.v_conv(x))))
        # Without softmax the product associates: q (k^T v) costs N d^2 instead of N^2 d and equals (q k^T) v.
        x = (q @ (k.transpose(-2, -1) @ v)) * self.scale  # T B h N d
        x = x.transpose(-1, -2).reshape(T, B, C, H * W)
        x = self.proj_bn(self.proj_conv(self.attn_lif(x)))
        return x.reshape(T, B, C, H, W)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Inference form (``timm.utils.reparameterize_model``): q, k, v one event-driven layer with their
        BatchNorms folded in, the projection another."""
        return FusedSpikingSelfAttention(self)


class FusedSpikingSelfAttention(nn.Module):
    """Inference form of ``SpikingSelfAttention``: the same function on channels-last token maps.

    q, k and v read the same input spikes, so they are one ``SpikingLinear`` of width 3C (BatchNorms folded); their
    three neurons (one configuration) run as one; the projection and its neuron are a second ``SpikingLinear``.
    """

    def __init__(self, attn: SpikingSelfAttention):
        super().__init__()
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        folded = [fold_bn(getattr(attn, f'{n}_conv').weight, getattr(attn, f'{n}_conv').bias,
                          getattr(attn, f'{n}_bn')) for n in 'qkv']
        self.qkv = SpikingLinear(attn.in_lif, torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]))
        self.qkv_lif = attn.q_lif
        if not all(_same_lif(attn.q_lif, getattr(attn, f'{n}_lif')) for n in 'kv'):
            raise NotImplementedError('q, k and v neurons of different configurations have no inference form')
        self.proj = SpikingLinear(attn.attn_lif, *fold_bn(attn.proj_conv.weight, attn.proj_conv.bias, attn.proj_bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        h = self.num_heads
        tokens = x.permute(0, 1, 3, 4, 2).reshape(T, B, H * W, C)  # free when x is channels last in memory
        qkv = self.qkv_lif(self.qkv(tokens))  # [T, B, N, 3C] spikes
        q, k, v = qkv.reshape(T, B, H * W, 3, h, C // h).permute(3, 0, 1, 4, 2, 5).unbind(0)  # T B h N d
        # binary q, k, v: every product and sum is an exact integer, so the order of evaluation does not matter
        x = (q @ (k.transpose(-2, -1) @ v)) * self.scale  # T B h N d
        x = self.proj(x.permute(0, 1, 3, 2, 4).reshape(T, B, H * W, C))
        return x.reshape(T, B, H, W, C).permute(0, 1, 4, 2, 3)


def _same_lif(a: nn.Module, b: nn.Module) -> bool:
    return repr(a) == repr(b) and type(a.surrogate_function) is type(b.surrogate_function)


class SpikingMLP(nn.Module):
    """LIF -> 1x1 conv + BN -> LIF -> 1x1 conv + BN."""

    def __init__(self, dim: int, hidden_dim: int, lif_cfg: Optional[LIFConfig] = None):
        super().__init__()
        self.fc1_lif = create_lif(lif_cfg)
        self.fc1_conv = layer.Conv2d(dim, hidden_dim, kernel_size=1, step_mode='m')
        self.fc1_bn = layer.BatchNorm2d(hidden_dim, step_mode='m')
        self.fc2_lif = create_lif(lif_cfg)
        self.fc2_conv = layer.Conv2d(hidden_dim, dim, kernel_size=1, step_mode='m')
        self.fc2_bn = layer.BatchNorm2d(dim, step_mode='m')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1_bn(self.fc1_conv(self.fc1_lif(x)))
        return self.fc2_bn(self.fc2_conv(self.fc2_lif(x)))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Inference form (``timm.utils.reparameterize_model``): two event-driven layers, BatchNorms folded."""
        return FusedSpikingMLP(self)


class FusedSpikingMLP(nn.Module):
    """Inference form of ``SpikingMLP`` on channels-last token maps: two ``SpikingLinear`` layers."""

    def __init__(self, mlp: SpikingMLP):
        super().__init__()
        self.fc1 = SpikingLinear(mlp.fc1_lif, *fold_bn(mlp.fc1_conv.weight, mlp.fc1_conv.bias, mlp.fc1_bn))
        self.fc2 = SpikingLinear(mlp.fc2_lif, *fold_bn(mlp.fc2_conv.weight, mlp.fc2_conv.bias, mlp.fc2_bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        x = spiking_mlp(self.fc1, self.fc2, x.permute(0, 1, 3, 4, 2))  # [T, B, H, W, C]: free when channels last
        return x.permute(0, 1, 4, 2, 3)


class SpikingformerBlock(nn.Module):
    """Spike-driven residual block: x + SSA(x), then x + MLP(x); each branch starts with a LIF."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            attn_scale: float = 0.125,
            attn_threshold: float = 0.5,
            drop_path: float = 0.,
            lif_cfg: Optional[LIFConfig] = None,
    ):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, attn_scale, attn_threshold, lif_cfg)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif_cfg)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _drop_path(self.attn(x), self.drop_path, self.training)
        return x + _drop_path(self.mlp(x), self.drop_path, self.training)


class Spikingformer(SpikingNet):
    """Spikingformer with timm's model API.

    ``forward_features`` returns the batch-first feature map [B, C, H, W] (the time-major map read out over time);
    ``forward_features_seq`` the time-major map [T, B, C, H, W]. ``forward_head`` takes either; ``forward`` pools the
    tokens at each time step, reads out over time and applies the head. Feature levels (``feature_info``,
    ``forward_intermediates``): the tokenizer, then every block, all at the tokenizer's stride.
    """

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
            T: int = 4,
            readout: str = 'mean',
            stem: str = 'cifar',
            pool_order: str = 'spike',
            attn_scale: float = 0.125,
            attn_threshold: float = 0.5,
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            dynamic_img_size: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            img_size: Input image size.
            in_chans: Number of input channels.
            num_classes: Head outputs (classes, or the embedding width of a CLIP projection); 0 for no head.
            global_pool: 'avg' (mean over tokens) or '' (no pooling; needs num_classes=0).
            embed_dim: Width of the tokens.
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width / embed_dim.
            T: Time steps (any integer >= 1).
            readout: Combination over time, 'mean' or 'weighted'.
            stem: Tokenizer layout (``STEM_POOL_STAGES``): 'cifar' (stride 4), 'cifar_light' (stride 4, pooled one
                stage earlier) or 'imagenet' (stride 16).
            pool_order: 'spike' (LIF -> MaxPool, Spikingformer) or 'real' (MaxPool -> LIF, SpikeCLIP code).
            attn_scale: Scale of the attention product.
            attn_threshold: Threshold of the LIF after the attention product.
            lif_cfg: LIF parameters (``LIFConfig`` or dict: tau, v_threshold, v_reset, detach_reset,
                decay_input, surrogate, surrogate_alpha).
            dynamic_img_size: Accept any input size the tokenizer can take, not only img_size.
            drop_rate: Dropout before the head.
            drop_path_rate: Stochastic depth rate.
            device: Device of the parameters and buffers (``'meta'``: none allocated; ``to_empty`` later).
            dtype: Floating point type of the parameters and buffers.
        """
        super().__init__()
        if stem not in STEM_POOL_STAGES:
            raise ValueError(f'Unknown stem {stem!r}; choose one of {sorted(STEM_POOL_STAGES)}')
        self.global_pool = check_global_pool(global_pool, num_classes)
        self.T = check_time_steps(T)
        self.lif_cfg = LIFConfig.from_any(lif_cfg)
        self.img_size = to_img_size(img_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size

        with device_scope(device):
            self.patch_embed = SpikingTokenizer(
                in_chans, embed_dim, STEM_POOL_STAGES[stem], pool_order, self.lif_cfg)
            self.stride = self.patch_embed.stride
            for s in self.img_size:
                _check_size(s, self.stride, 'img_size')
            dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
            self.blocks = nn.Sequential(*[
                SpikingformerBlock(embed_dim, num_heads, mlp_ratio, attn_scale, attn_threshold, dpr[i], self.lif_cfg)
                for i in range(depth)
            ])
            self.feature_info = [dict(num_chs=embed_dim, reduction=self.stride, module='patch_embed')] + [
                dict(num_chs=embed_dim, reduction=self.stride, module=f'blocks.{i}') for i in range(depth)]
            self._init_head(embed_dim, num_classes, self.T, readout, drop_rate)
        if dtype is not None:
            self.to(dtype=dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^blocks\.(\d+)' if coarse else [(r'^blocks\.(\d+)', None), (r'^readout', (99999,))],
        )

    def _input_sequence(self, x: torch.Tensor) -> torch.Tensor:
        return image_to_sequence(x, self.in_chans, self.img_size, self.stride, self.dynamic_img_size, self.T,
                                 next(self.patch_embed.parameters()).dtype)

    def _run_levels(self, x: torch.Tensor, stop: Optional[int] = None) -> Iterator[torch.Tensor]:
        # level 0: the tokenizer. Its full-resolution maps hold about as much as all blocks together (at T=8,
        # 32x32), so grad checkpointing covers it too; without it the peak falls by only ~45% instead of ~64%.
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x = checkpoint_module(self.patch_embed, x, self.T)
        else:
            x = self.patch_embed(x, self.T)
        yield x
        for blk in self.blocks[:None if stop is None else stop - 1]:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_module(blk, x)
            else:
                x = blk(x)
            yield x

    def _num_levels(self) -> int:
        return len(self.blocks) + 1

    def _prune_levels(self, max_index: int):
        self.blocks = self.blocks[:max_index]


# Spikingformer's own repository names (block.N, patch_embed.projK_*, mlpK_*) -> this file's names.
_KEY_RENAMES = [
    (r'^block\.', 'blocks.'),
    (r'^patch_embed\.proj_(conv|bn)\.', r'patch_embed.stages.0.\1.'),
    (r'^patch_embed\.proj(\d)_(conv|bn)\.', lambda m: f'patch_embed.stages.{m[1]}.{m[2]}.'),
    (r'\.attn\.proj_lif\.', '.attn.in_lif.'),
    (r'\.mlp\.mlp(\d)_(conv|bn)\.', r'.mlp.fc\1_\2.'),
]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Spikingformer) -> Dict[str, torch.Tensor]:
    """Map Spikingformer reference checkpoints to this layout and refuse a checkpoint of another config."""
    state_dict = state_dict.get('model', state_dict.get('state_dict', state_dict))
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix('module.')
        for pattern, repl in _KEY_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    expected = model.state_dict()
    problems = describe_mismatches(state_dict_mismatches(expected, out), n=8)
    if problems:
        raise ValueError(
            'The checkpoint does not fit this model configuration (was it saved from another variant, '
            'embed_dim, depth, readout or num_classes?): ' + problems)
    check_state_dict_dtypes(expected, out)  # an int or fp16 tensor would be cast into the model without a word
    return out


def _create_spikingformer(variant: str, pretrained: bool = False, **kwargs) -> Spikingformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        Spikingformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': 'patch_embed.stages.0.conv', 'classifier': 'head',
        'license': 'apache-2.0',
        **kwargs,
    }


_imagenet = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(14, 14), crop_pct=0.875,
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)

default_cfgs = generate_default_cfgs({
    'spikingformer_4_256': _cfg(),
    'spikingformer_2_384': _cfg(),
    'spikingformer_4_384': _cfg(),
    'spikingformer_8_384': _cfg(**_imagenet),
    'spikingformer_8_512': _cfg(**_imagenet),
    'spikingformer_8_768': _cfg(**_imagenet),
    # SpikeCLIP image encoder: CLIP-normalised images resized to 32x32; the head is the 512-d projection.
    'spikingformer_clip': _cfg(num_classes=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
})


@register_model
def spikingformer_4_256(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-4-256, CIFAR (32x32, T=4)."""
    model_args = dict(embed_dim=256, depth=4, num_heads=16, stem='cifar')
    return _create_spikingformer('spikingformer_4_256', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_2_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-2-384, CIFAR (32x32, T=4)."""
    model_args = dict(embed_dim=384, depth=2, num_heads=12, stem='cifar')
    return _create_spikingformer('spikingformer_2_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_4_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-4-384, CIFAR (32x32, T=4)."""
    model_args = dict(embed_dim=384, depth=4, num_heads=12, stem='cifar')
    return _create_spikingformer('spikingformer_4_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_8_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-8-384, ImageNet (224x224, T=4)."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=384, depth=8, num_heads=12, stem='imagenet')
    return _create_spikingformer('spikingformer_8_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_8_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-8-512, ImageNet (224x224, T=4)."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=512, depth=8, num_heads=8, stem='imagenet')
    return _create_spikingformer('spikingformer_8_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_8_768(pretrained: bool = False, **kwargs) -> Spikingformer:
    """Spikingformer-8-768, ImageNet (224x224, T=4)."""
    model_args = dict(img_size=224, num_classes=1000, embed_dim=768, depth=8, num_heads=12, stem='imagenet')
    return _create_spikingformer('spikingformer_8_768', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_clip(pretrained: bool = False, **kwargs) -> Spikingformer:
    """SpikeCLIP image encoder: Spikingformer-4-384, 8 heads, 32x32, T=4, 512-d CLIP projection head."""
    model_args = dict(num_classes=512, embed_dim=384, depth=4, num_heads=8, stem='cifar', T=4)
    return _create_spikingformer('spikingformer_clip', pretrained=pretrained, **dict(model_args, **kwargs))
