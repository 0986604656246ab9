"""What the spiking text towers share: their config (``text_cfg``), token + position embeddings, the paper's
initialisation from CLIP's embeddings, locking and checkpointing switches (``SpikingTextTower``).

``SpikingTextCfg`` (a SpikeCLIP config's ``text_cfg``) picks the spiking MLP of the paper (``"arch": "mlp"``, the
default; ``open_clip_spike.text.mlp``) or a spiking transformer (``"arch": "transformer"``;
``open_clip_spike.text.transformer``) for the paper's comparison of the two.
"""
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from timm_spike.layers import LIFConfig, check_time_steps

__all__ = ['SpikingTextCfg', 'SpikingTextTower', 'TEXT_ARCHS', 'init_embeddings_from_teacher']

_logger = logging.getLogger(__name__)

# text_cfg keys open_clip itself reads (tokenizer selection) that the tower does not use.
_TOKENIZER_KEYS = ('hf_tokenizer_name', 'tokenizer_mode', 'tokenizer_kwargs')


# Text tower architectures and the text_cfg keys that only make sense for each, with their defaults.
TEXT_ARCHS: Dict[str, Dict[str, Any]] = {
    'mlp': dict(hidden_dim=2048),  # SpikingTextMLP (the paper's choice)
    'transformer': dict(layers=4, heads=8, mlp_ratio=4.0),  # open_clip_spike.text.transformer
}


@dataclass
class SpikingTextCfg:
    """``text_cfg`` of a SpikeCLIP model config (open_clip's CLIPTextCfg counterpart).

    ``arch`` picks the text tower: 'mlp' (``SpikingTextMLP``, the default, so configs without ``arch`` load as
    before) or 'transformer' (``SpikingTextTransformer``). The keys of the other architecture must be left out;
    the chosen architecture's own keys default to ``TEXT_ARCHS[arch]``.
    """
    context_length: int = 20
    vocab_size: int = 49408
    width: int = 512  # token embedding width
    hidden_dim: Optional[int] = None  # 'mlp': width of the hidden spiking layer (2048)
    pad_id: int = 0  # the id open_clip's SimpleTokenizer pads with
    arch: str = 'mlp'
    layers: Optional[int] = None  # 'transformer': spiking self-attention blocks (4)
    heads: Optional[int] = None  # 'transformer': attention heads (8)
    mlp_ratio: Optional[float] = None  # 'transformer': MLP hidden width / width (4.0)

    def __post_init__(self):
        if self.arch not in TEXT_ARCHS:
            raise ValueError(f'Unknown SpikeCLIP text_cfg arch {self.arch!r}; choose one of {sorted(TEXT_ARCHS)}')
        foreign = sorted(k for a, keys in TEXT_ARCHS.items() if a != self.arch for k in keys
                         if getattr(self, k) is not None)
        if foreign:
            owners = sorted({a for a, keys in TEXT_ARCHS.items() for k in foreign if k in keys})
            raise ValueError(
                f'Unknown SpikeCLIP text_cfg keys {foreign} for arch {self.arch!r}: they belong to arch '
                f'{" / ".join(map(repr, owners))}; remove them, or set "arch": {owners[0]!r} in text_cfg')
        for k, default in TEXT_ARCHS[self.arch].items():
            if getattr(self, k) is None:
                setattr(self, k, default)
        for k in ('context_length', 'vocab_size', 'width', *TEXT_ARCHS[self.arch]):
            if not getattr(self, k) > 0:
                raise ValueError(f'SpikeCLIP text_cfg {k} must be > 0, got {getattr(self, k)!r}')

    @classmethod
    def from_any(cls, cfg: Union[None, 'SpikingTextCfg', Dict[str, Any]]) -> 'SpikingTextCfg':
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        cfg = {k: v for k, v in dict(cfg).items() if k not in _TOKENIZER_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f'Unknown SpikeCLIP text_cfg keys {sorted(unknown)}; known: {sorted(known)}')
        return cls(**cfg)

    def to_dict(self) -> Dict[str, Any]:
        """The config as a dict, without the keys of the other architecture (``from_any`` round-trips it)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def tower_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the chosen tower's class (everything but ``arch``)."""
        out = self.to_dict()
        out.pop('arch')
        return out


@torch.no_grad()
def init_embeddings_from_teacher(tower: nn.Module, teacher: nn.Module, rescale: bool = True) -> nn.Module:
    """Copy the token and position embeddings of an open_clip model into a spiking text tower.

    The paper initialises the text tower's embeddings from CLIP's; both text towers (``SpikingTextMLP``,
    ``SpikingTextTransformer``) hold them as ``token_embedding`` (nn.Embedding) and ``pos_embed``
    [context_length, width].

    Args:
        tower: The spiking text tower (``vocab_size``, ``width``, ``context_length`` attributes).
        teacher: An open_clip ``CLIP`` / ``CustomTextCLIP`` (or its text transformer) with
            ``token_embedding`` and ``positional_embedding`` of the tower's width and a vocabulary of
            the tower's size. Only the first ``context_length`` positions are used.
        rescale: Multiply both embeddings by one common factor that gives the token embedding unit
            standard deviation. CLIP's embeddings (std about 0.02) would not reach the LIF threshold;
            one common factor keeps their geometry (directions and relative sizes).

    Returns:
        The tower.
    """
    source = teacher
    if not hasattr(source, 'token_embedding') and hasattr(source, 'text'):
        source = source.text  # CustomTextCLIP keeps its text transformer in .text
    tok = getattr(source, 'token_embedding', None)
    pos = getattr(source, 'positional_embedding', None)
    if not isinstance(tok, nn.Embedding) or not isinstance(pos, torch.Tensor):
        raise ValueError(
            f'{type(teacher).__name__} has no token_embedding (nn.Embedding) and positional_embedding to copy; '
            f'pass an open_clip CLIP model with a transformer text tower')
    if tuple(tok.weight.shape) != (tower.vocab_size, tower.width):
        raise ValueError(
            f'Teacher token embedding is {tuple(tok.weight.shape)} but this tower needs '
            f'({tower.vocab_size}, {tower.width}); use a text_cfg width/vocab_size that matches the teacher')
    if pos.shape[-1] != tower.width or pos.shape[0] < tower.context_length:
        raise ValueError(
            f'Teacher position embedding is {tuple(pos.shape)} but this tower needs at least '
            f'({tower.context_length}, {tower.width})')
    scale = 1.0 / tok.weight.float().std().clamp_min(1e-12).item() if rescale else 1.0
    tower.token_embedding.weight.copy_(tok.weight.float() * scale)
    tower.pos_embed.copy_(pos[:tower.context_length].float() * scale)
    _logger.info('Initialised the spiking text embeddings from %s (scale %.3g)', type(teacher).__name__, scale)
    return tower


class SpikingTextTower(nn.Module):
    """Base of the spiking text towers: [B, L] CLIP token ids -> [B, output_dim] float embedding.

    Holds the token embedding and the position embedding of the ``context_length`` slots, and the open_clip
    text-tower interface (``lock``, ``set_grad_checkpointing``, ``no_weight_decay``, ``init_from_teacher``).
    Subclasses build their layers after ``super().__init__`` and list their parameter groups for ``lock``.
    Neurons start from rest on every call (timm_spike's StatelessLIFNode), so a prompt's embedding does not
    depend on what was encoded before it (the reference code leaks membrane potential between calls, which
    makes class embeddings depend on class order).
    """

    def __init__(
            self,
            context_length: int,
            vocab_size: int,
            width: int,
            output_dim: int,
            T: int,
            lif_cfg: Optional[Union[LIFConfig, Dict[str, Any]]],
            pad_id: int,
    ):
        super().__init__()
        for name, value in (('context_length', context_length), ('vocab_size', vocab_size), ('width', width),
                            ('output_dim', output_dim)):
            if not value > 0:
                raise ValueError(f'{type(self).__name__} {name} must be > 0, got {value!r}')
        self.context_length = int(context_length)
        self.vocab_size = int(vocab_size)
        self.width = int(width)
        self.output_dim = int(output_dim)
        self.T = check_time_steps(T)
        self.pad_id = int(pad_id)
        self.lif_cfg = LIFConfig.from_any(lif_cfg)
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(self.vocab_size, self.width)
        # Not named positional_embedding: open_clip's load_checkpoint would then interpolate it to another
        # context length, which is meaningless here (each slot is a fixed position of the prompt).
        self.pos_embed = nn.Parameter(torch.empty(self.context_length, self.width))

    def init_embeddings(self):
        # Unit-variance token embeddings (nn.Embedding's default) so the first LIF (threshold 1) fires from
        # the start; CLIP's std 0.02 would leave it silent.
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.pos_embed, std=0.1)

    def init_from_teacher(self, teacher: nn.Module, rescale: bool = True) -> 'SpikingTextTower':
        """Copy the token and position embeddings of an open_clip model (the paper initialises from CLIP's).

        See ``init_embeddings_from_teacher`` for the arguments; returns self.
        """
        return init_embeddings_from_teacher(self, teacher, rescale)

    def lock_groups(self) -> List[Sequence[nn.Parameter]]:
        """The parameter groups ``lock`` freezes from the first on (embeddings first, output last)."""
        raise NotImplementedError

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> int:
        """Freeze the tower (open_clip's ``lock_text_tower`` interface).

        Args:
            unlocked_layers: Leave the last n of ``lock_groups()`` trainable.
            freeze_layer_norm: See the subclass (a tower with BatchNorm may keep locked statistics fixed).

        Returns:
            The number of groups locked.
        """
        groups = self.lock_groups()
        n_locked = max(len(groups) - int(unlocked_layers), 0)
        for i, group in enumerate(groups):
            for p in group:
                p.requires_grad = i >= n_locked
        return n_locked

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed', 'readout.logits'}

    def pad_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Check token ids [B, L] and pad them to [B, context_length] with ``pad_id``."""
        if text.ndim != 2:
            raise ValueError(f'Expected token ids of shape [batch, context_length], got shape {tuple(text.shape)}')
        L = text.shape[1]
        if L > self.context_length:
            raise ValueError(
                f'Got {L} tokens per prompt but the spiking text tower has {self.context_length} slots; '
                f'tokenize with open_clip.get_tokenizer(<model name>), which truncates to the context length')
        if L < self.context_length:
            text = nn.functional.pad(text, (0, self.context_length - L), value=self.pad_id)
        return text

    def embed_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Padded token ids [B, context_length] -> token + position embeddings [B, context_length, width]."""
        return self.token_embedding(text) + self.pos_embed.to(self.token_embedding.weight.dtype)
