"""SpikeCLIP as an open_clip model (Lv et al., 2023, arXiv 2310.06488).

``SpikeCLIP`` is open_clip's ``CustomTextCLIP`` with two spiking towers: a timm_spike backbone
(``spikingformer_clip``) as ``.visual`` and the spiking MLP ``.text`` (or the spiking transformer of
``open_clip_spike.text.transformer`` with ``text_cfg`` ``"arch": "transformer"``). It keeps open_clip's API
(``encode_image``, ``encode_text``, ``forward`` with ``output_dict``, ``logit_scale``, tower locking), so
open_clip's factory, training loop and zero-shot helpers use it unchanged. open_clip_spike.factory makes
``open_clip.create_model`` build it for configs with ``"model_class": "SpikeCLIP"``.

Config (model_configs/SpikeCLIP-*.json): top-level ``T`` (time steps of both towers), optional ``lif_cfg``
and ``readout``; ``vision_cfg`` as open_clip's timm configs plus ``timm_model_kwargs``; ``text_cfg`` as
``open_clip_spike.text.SpikingTextCfg``.
"""
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from open_clip.model import CustomTextCLIP
from open_clip.timm_model import TimmModel
from open_clip.utils import to_2tuple

import timm
from timm_spike.layers import LIFConfig
from timm_spike.layers.guards import check_image, check_max_time_steps, check_state_dict_dtypes
from timm_spike.models import describe_mismatches, state_dict_mismatches
from .text import SpikingTextCfg, SpikingTextMLP, SpikingTextTransformer

__all__ = ['SpikeCLIP', 'SpikingTimmModel', 'SpikingVisionCfg', 'SpikingTextCfg', 'state_dict_mismatches']

_logger = logging.getLogger(__name__)


@dataclass
class SpikingVisionCfg:
    """``vision_cfg`` of a SpikeCLIP model config: open_clip's timm keys plus ``timm_model_kwargs``."""
    timm_model_name: str = 'spikingformer_clip'
    timm_model_kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    timm_model_pretrained: bool = False  # set by open_clip.create_model
    timm_pool: str = 'avg'
    timm_proj: str = ''  # '' : the timm head is the projection to embed_dim (the paper's Linear 384->512)
    timm_proj_bias: bool = False
    timm_drop: float = 0.
    timm_drop_path: Optional[float] = None
    image_size: Union[int, Tuple[int, int]] = 32
    patch_dropout: float = 0.  # accepted because open_clip's force_patch_dropout writes it; must stay 0

    @classmethod
    def from_any(cls, cfg: Union[None, 'SpikingVisionCfg', Dict[str, Any]]) -> 'SpikingVisionCfg':
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f'Unknown SpikeCLIP vision_cfg keys {sorted(unknown)}; known: {sorted(known)}')
        out = cls(**cfg)
        if out.patch_dropout:
            raise ValueError('patch_dropout is not supported by the spiking image tower; leave it at 0')
        return out

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class SpikingTimmModel(TimmModel):
    """open_clip's ``TimmModel`` that passes model kwargs (T, LIF parameters, sizes) and the image size to timm.

    open_clip 3.3's TimmModel calls ``timm.create_model(name, num_classes=..., global_pool=...)`` with no
    other model arguments and never passes ``img_size``; everything else (forward, lock, intermediates,
    state-dict layout ``trunk.*`` / ``head.*``) is inherited unchanged.
    """

    def __init__(
            self,
            model_name: str,
            embed_dim: int,
            image_size: Union[int, Tuple[int, int]] = 32,
            pool: str = 'avg',
            proj: str = '',
            proj_bias: bool = False,
            drop: float = 0.,
            drop_path: Optional[float] = None,
            pretrained: bool = False,
            model_kwargs: Optional[Dict[str, Any]] = None,
    ):
        nn.Module.__init__(self)  # TimmModel.__init__ would build the trunk without our kwargs
        self.image_size = to_2tuple(image_size)
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault('img_size', self.image_size)
        if drop_path is not None:
            kwargs['drop_path_rate'] = drop_path
        if proj not in ('', 'none', 'linear'):
            raise ValueError(f"timm_proj must be '', 'none' or 'linear' for a spiking tower, got {proj!r}")
        if proj == 'linear':
            self.trunk = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool=pool, **kwargs)
            self.head = nn.Sequential()
            self.head.add_module('drop', nn.Dropout(drop))
            self.head.add_module('proj', nn.Linear(self.trunk.num_features, embed_dim, bias=proj_bias))
        else:
            num_classes = 0 if proj == 'none' else embed_dim
            self.trunk = timm.create_model(
                model_name, pretrained=pretrained, num_classes=num_classes, global_pool=pool, **kwargs)
            self.head = nn.Sequential()
        self._bn_frozen = False

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        # open_clip's freeze_batch_norm_2d swaps in FrozenBatchNorm2d, which cannot take the time-major
        # [T, B, C, H, W] tensors of spikingjelly's multi-step BN: keep those BN layers in eval mode instead.
        super().lock(unlocked_groups=unlocked_groups, freeze_bn_stats=False)
        if freeze_bn_stats:
            self._bn_frozen = True
            self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, '_bn_frozen', False):
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class SpikeCLIP(CustomTextCLIP):
    """SpikeCLIP: spiking image tower (timm_spike) + spiking MLP text tower, in open_clip's CLIP interface.

    ``forward(image, text)`` returns normalised ``image_features``, ``text_features`` and ``logit_scale``
    (the exponentiated learnable temperature; the reference code has none), as a dict when ``output_dict``.
    """

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: Union[SpikingVisionCfg, Dict[str, Any]],
            text_cfg: Union[SpikingTextCfg, Dict[str, Any]],
            T: int = 4,
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]] = None,
            readout: str = 'mean',
            quick_gelu: bool = False,
            init_logit_scale: float = np.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = False,
    ):
        """
        Args:
            embed_dim: Width of the shared embedding space (512 for CLIP ViT-B/16's).
            vision_cfg: Image tower config (``SpikingVisionCfg`` or dict).
            text_cfg: Text tower config (``SpikingTextCfg`` or dict).
            T: Time steps of both towers.
            lif_cfg: LIF parameters of both towers (``LIFConfig`` or dict); None for the paper's defaults.
            readout: Combination over time of both towers, 'mean' or 'weighted'.
            quick_gelu: Ignored (no GELU in a spiking tower); accepted because open_clip passes it.
            init_logit_scale: Initial log of the logit scale (CLIP's log(1 / 0.07)).
            init_logit_bias: Initial logit bias (SigLIP-style losses), None for none.
            nonscalar_logit_scale: Store the logit scale as a [1] tensor instead of a scalar.
            cast_dtype: Ignored (open_clip casts timm-based models as a whole).
            output_dict: Return a dict from ``forward``.
        """
        # CustomTextCLIP.__init__ builds open_clip's own towers from its config dataclasses, which
        # reject the spiking keys; build the towers here and set the same attributes it would.
        nn.Module.__init__(self)
        self.output_dict = output_dict
        T = check_max_time_steps(T)  # before any tower is allocated
        self.lif_cfg = LIFConfig.from_any(lif_cfg)
        self.vision_cfg = SpikingVisionCfg.from_any(vision_cfg)
        self.text_cfg = SpikingTextCfg.from_any(text_cfg)
        lif_dict = self.lif_cfg.to_dict()

        vkw = dict(self.vision_cfg.timm_model_kwargs)
        clash = {'T', 'lif_cfg', 'readout'} & set(vkw)
        if clash:
            raise ValueError(
                f'Set {sorted(clash)} at the top level of the SpikeCLIP config (it applies to both towers), '
                f'not in vision_cfg.timm_model_kwargs')
        vkw.update(T=T, lif_cfg=lif_dict, readout=readout)
        self.visual = SpikingTimmModel(
            self.vision_cfg.timm_model_name,
            embed_dim=embed_dim,
            image_size=self.vision_cfg.image_size,
            pool=self.vision_cfg.timm_pool,
            proj=self.vision_cfg.timm_proj,
            proj_bias=self.vision_cfg.timm_proj_bias,
            drop=self.vision_cfg.timm_drop,
            drop_path=self.vision_cfg.timm_drop_path,
            pretrained=self.vision_cfg.timm_model_pretrained,
            model_kwargs=vkw,
        )
        text_tower = SpikingTextTransformer if self.text_cfg.arch == 'transformer' else SpikingTextMLP
        self.text = text_tower(
            output_dim=embed_dim, T=T, readout=readout, lif_cfg=lif_dict, **self.text_cfg.tower_kwargs())
        self.embed_dim = embed_dim
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size

        lshape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.ones(lshape) * init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones(lshape) * init_logit_bias) if init_logit_bias is not None else None

    @property
    def T(self) -> int:
        """Time steps of the towers (both use the same T)."""
        return self.text.T

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """Freeze the text tower (stage 2 of the paper fine-tunes the image tower only)."""
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def init_text_from_teacher(self, teacher: nn.Module, rescale: bool = True) -> 'SpikeCLIP':
        """Initialise the text token/position embeddings from an open_clip teacher (see SpikingTextMLP)."""
        self.text.init_from_teacher(teacher, rescale=rescale)
        return self

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings; refuses non-float, non-finite and wrongly timed input (``timm_spike.layers.guards``).

        Args:
            image: Preprocessed ``[B, C, H, W]`` images, or a ``[T, B, C, H, W]`` sequence of this model's T steps.
            normalize: Return unit-norm embeddings.
        """
        p = next(self.visual.parameters(), None)
        image = check_image(image, T=self.T, dtype=None if p is None else p.dtype)
        return super().encode_image(image, normalize=normalize)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # load_state_dict casts silently (int32 weights into float parameters): refuse other dtypes by name
        check_state_dict_dtypes(self.state_dict(), state_dict)
        # torch's message lists every key; for the common mistake (a checkpoint of another SpikeCLIP config)
        # say so, with the first few offending keys of each kind.
        if strict:
            problems = describe_mismatches(state_dict_mismatches(self, state_dict))
            if problems:
                raise ValueError(
                    'Checkpoint does not fit this SpikeCLIP model (was it saved from another model config, '
                    'e.g. SpikeCLIP-Tiny vs SpikeCLIP-Spikingformer-4-384?): ' + problems)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
