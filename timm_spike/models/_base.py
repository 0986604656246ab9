"""The base of every spiking tower: timm's model API written once.

A family (``spikingformer.py``, ``spikformer.py``, ...) builds its trunk, and tells the base three things:

- ``_input_sequence(x)``: the checked, encoded input sequence ([T', B, C, H, W]) of an image batch or sequence;
- ``_run_levels(x, stop)``: run the trunk level by level, yielding each feature level's time-major map
  (level 0 the stem; ``stop`` levels at most), with gradient checkpointing where enabled;
- ``_num_levels()`` and ``_prune_levels(max_index)``: how many levels there are, and dropping those after
  ``max_index``,

and calls ``_init_head`` once its trunk is built. The base implements the rest, as timm's models do:
``forward_features`` (batch-first, the time-major map read out over time) / ``forward_features_seq``
(time-major), pooling over tokens and the readout over time (``TemporalReadout``, any T), ``forward_head``
(either map), ``forward``, ``get_classifier`` / ``reset_classifier`` (with ``global_pool``),
``forward_intermediates`` / ``prune_intermediate_layers``, ``set_grad_checkpointing``, ``no_weight_decay``.

Also here: the checks of the arguments every family takes (``T``, ``img_size``, ``num_classes`` with
``global_pool``) and the report of a state dict that does not fit a model (``state_dict_mismatches``,
``describe_mismatches``), used by the checkpoint filters and by SpikeCLIP's ``load_state_dict``.
"""
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from ..layers import TemporalReadout, linear_like

__all__ = ['SpikingNet', 'GLOBAL_POOLS', 'resolve_global_pool', 'state_dict_mismatches', 'describe_mismatches']

GLOBAL_POOLS = ('avg', '')


def resolve_global_pool(current: str, num_classes: int, global_pool: Optional[str] = None) -> str:
    """The pooling after ``reset_classifier(num_classes, global_pool)``: the current one unless given; a classifier
    on an unpooled model (``global_pool=''``, not given again) brings back the mean over tokens it needs."""
    if global_pool is None:
        return 'avg' if num_classes > 0 else current
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"Unknown global_pool {global_pool!r}; choose 'avg' or ''")
    if num_classes > 0 and not global_pool:
        raise ValueError("global_pool='' gives unpooled [B, C, H, W] features and needs num_classes=0")
    return global_pool


def check_global_pool(global_pool: str, num_classes: int) -> str:
    """A model's ``global_pool`` argument, checked against its ``num_classes``."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"Unknown global_pool {global_pool!r}; choose 'avg' or ''")
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0, got {num_classes}')
    if num_classes and not global_pool:
        raise ValueError("global_pool='' gives unpooled [B, C, H, W] features and needs num_classes=0")
    return global_pool


def to_img_size(img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """An int or (height, width) of positive ints -> (height, width)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f'img_size must be an int or (height, width) of positive ints, got {img_size!r}')
    return size


def state_dict_mismatches(model: Union[nn.Module, Dict[str, torch.Tensor]],
                          state_dict: Dict[str, Any]) -> Dict[str, List[str]]:
    """Missing and unexpected keys (sorted) and wrongly shaped ones of ``state_dict`` for ``model`` (a module or its
    state dict).

    Wrongly shaped keys come in the model's order, the first of each top-level module (``visual``, ``text``;
    ``patch_embed``, ``blocks``) first, so the first few name every part of the model that differs.
    """
    own = model.state_dict() if isinstance(model, nn.Module) else model
    shape = [k for k, v in own.items()
             if k in state_dict and hasattr(state_dict[k], 'shape') and state_dict[k].shape != v.shape]
    firsts: Dict[str, str] = {}
    for k in shape:
        firsts.setdefault(k.split('.')[0], k)
    shape = list(firsts.values()) + [k for k in shape if k not in firsts.values()]
    return dict(
        missing=sorted(set(own) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(own)),
        shape=[f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}' for k in shape],
    )


def describe_mismatches(bad: Dict[str, List[str]], n: int = 6) -> str:
    """One line naming the first ``n`` keys of each kind of ``state_dict_mismatches``' result ('' if none)."""
    def _few(items: List[str]) -> str:
        return ', '.join(items[:n]) + (f', ... ({len(items)} in all)' if len(items) > n else '')
    return '; '.join(f'{kind}: {_few(keys)}' for kind, keys in (
        ('shape mismatches', bad['shape']), ('missing keys', bad['missing']),
        ('unexpected keys', bad['unexpected'])) if keys)


class SpikingNet(nn.Module):
    """timm's model API around a spiking trunk that runs time-major, [T, B, C, H, W].

    Subclasses build the trunk, then call ``_init_head`` and set ``feature_info``; they implement
    ``_input_sequence``, ``_run_levels``, ``_num_levels``, ``_prune_levels`` and ``group_matcher`` and may override
    ``pool_tokens`` (the per-step pooling) and ``_pool_map`` (pooling of a batch-first map). ``head_name`` is the
    classifier attribute ('head', or 'fc' where a ResNet's checkpoints use that name).
    """
    head_name: str = 'head'
    feature_info: List[Dict[str, Any]]

    def _init_head(self, num_features: int, num_classes: int, T: int, readout: str, drop_rate: float):
        """The readout over time, dropout and the linear head (an identity for ``num_classes=0``)."""
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        self.readout = TemporalReadout(T, readout)
        self.head_drop = nn.Dropout(drop_rate)
        setattr(self, self.head_name, linear_like(self, num_features, num_classes))

    # what a family implements

    def _input_sequence(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run_levels(self, x: torch.Tensor, stop: Optional[int] = None) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def _num_levels(self) -> int:
        raise NotImplementedError

    def _prune_levels(self, max_index: int):
        raise NotImplementedError

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        raise NotImplementedError

    # timm's model API

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'readout.logits'}

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

    def forward_features_seq(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major feature map [T, B, C, H', W'] of an image batch or an encoded [T, B, C, H, W] sequence."""
        for x in self._run_levels(self._input_sequence(x)):
            pass
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-first feature map [B, C, H', W']: the time-major map read out over time."""
        return self.readout(self.forward_features_seq(x))

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, C]: the mean over tokens (positions) at each time step."""
        return x.flatten(3).mean(3)

    def _pool_seq(self, x: torch.Tensor) -> torch.Tensor:
        # tokens are pooled at each time step, then read out over time: [T, B, C, H, W] -> [B, C] (or [B, C, H, W])
        if self.global_pool == 'avg':
            return self.readout(self.pool_tokens(x))
        return self.readout(x)

    def _pool_map(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(2) if self.global_pool == 'avg' else x

    def _head(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head on the batch-first map of ``forward_features`` or the time-major map of ``forward_features_seq``.

        The two agree up to rounding where pooling is linear (pooling over tokens and the readout over time both
        are); ``forward`` takes the time-major path.
        """
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
        """Forward features that returns intermediates (batch-first: each level's map read out over time).

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
        take_indices, max_index = feature_take_indices(self._num_levels(), indices)
        intermediates = []
        levels = self._run_levels(self._input_sequence(x), max_index + 1 if stop_early else None)
        for i, x in enumerate(levels):
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
        """Drop the levels after the last needed one (and optionally the head)."""
        take_indices, max_index = feature_take_indices(self._num_levels(), indices)
        self._prune_levels(max_index)
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
