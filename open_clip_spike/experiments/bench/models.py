"""The benchmark models (a Spikingformer tower, the spiking text tower, a whole SpikeCLIP), their inputs and losses,
and one model switched between its variants."""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from timm_spike.layers import StatelessLIFNode, set_lif_impl

from .config import ANN, ANN_TB, MODELS, QUICK_KWARGS, _split_impl


def _model_kwargs(name: str, quick: bool, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    kw = dict(QUICK_KWARGS.get(name) or {}) if quick else {}
    kw.update(extra or {})
    return kw


def build_bench_model(
        name: str,
        T: int,
        impl: str,
        batch_size: int,
        quick: bool = False,
        device: str = 'cpu',
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Callable[[int], Any], Callable[[Any], torch.Tensor]]:
    """Build a benchmark model with its input maker and training loss.

    Args:
        name: One of ``MODELS``.
        T: Time steps.
        impl: Neuron implementation, or 'ann' for identity neurons (use T=1 for the ANN baseline).
        batch_size: Unused here; kept so a subprocess spec is one dict.
        quick: Build the tiny version.
        device: Where to build it.
        model_kwargs: Keyword overrides for the model constructor.

    Returns:
        (model, make_input(batch) -> args tuple, loss(output) -> scalar).
    """
    # the neuron implementation is a process-wide switch (timm_spike.layers.set_lif_impl), set per call
    if impl != ANN:
        set_lif_impl(_split_impl(impl)[0])
    kw = _model_kwargs(name, quick, model_kwargs)
    g = torch.Generator().manual_seed(0)
    if name == 'spikingformer_clip':
        import timm
        import timm_spike  # noqa: F401
        model = timm.create_model('spikingformer_clip', T=T, **kw)
        size = model.img_size

        def make_input(b):
            return (torch.randn(b, 3, *size, generator=g).to(device),)

        def loss_fn(out):
            return out.float().square().mean()
    elif name == 'text':
        from open_clip_spike.text import SpikingTextMLP
        model = SpikingTextMLP(T=T, **kw)
        vocab, ctx = model.vocab_size, model.context_length

        def make_input(b):
            return (torch.randint(1, vocab, (b, ctx), generator=g).to(device),)

        def loss_fn(out):
            return out.float().square().mean()
    elif name in MODELS or name.startswith('SpikeCLIP'):
        import open_clip
        import open_clip_spike  # noqa: F401  (registers the configs)
        arch = 'SpikeCLIP-Tiny' if quick and name == 'SpikeCLIP-Spikingformer-4-384' else name
        model = open_clip.create_model(arch, T=T, output_dict=True, **kw)
        clip_loss = open_clip.ClipLoss()
        size = model.visual.image_size if hasattr(model.visual, 'image_size') else (32, 32)
        size = (size, size) if isinstance(size, int) else tuple(size)
        ctx, vocab = model.context_length, model.vocab_size

        def make_input(b):
            return (torch.randn(b, 3, *size, generator=g).to(device),
                    torch.randint(1, vocab, (b, ctx), generator=g).to(device))

        def loss_fn(out):
            return clip_loss(out['image_features'], out['text_features'], out['logit_scale'])
    else:
        raise ValueError(f'Unknown benchmark model {name!r}; choose from {list(MODELS)}')
    if impl == ANN:
        from timm_spike.energy import ann_equivalent  # the one definition of "the ANN of equal shape"
        model = ann_equivalent(model)
    return model.to(device), make_input, loss_fn


class _Variants:
    """One model whose T and neurons are switched between calls, so every variant uses the same weights.

    The ANN variant swaps in identities where ``timm_spike.energy.ann_equivalent`` would, in place (a copy per
    variant would hold another set of weights, gradients and optimizer state).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, StatelessLIFNode)]
        self.t_owners = [m for m in model.modules() if isinstance(vars(m).get('T'), int)]
        self.current = None

    def set(self, T: int, impl: str):
        """Switch to ``impl`` at T ('ann' or 'ann-TxB': identity neurons, always one time step)."""
        if impl == ANN_TB:
            T, impl = 1, ANN
        if self.current == (T, impl):
            return
        for m in self.t_owners:
            m.T = T
        for name, lif in self.neurons:
            parent_name, _, child = name.rpartition('.')
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if impl == ANN:
                setattr(parent, child, nn.Identity())
            else:
                setattr(parent, child, lif)
        if impl != ANN:
            set_lif_impl(impl)
        self.current = (T, impl)


def _make_optimizer(name: str, params) -> torch.optim.Optimizer:
    # lr=0: every variant runs the full optimizer step on the same, unchanging weights (torch has no lr=0
    # shortcut: AdamW still updates its moments and the weights with a zero step)
    if name == 'adamw':
        return torch.optim.AdamW(params, lr=0.0)
    if name == 'sgd':
        return torch.optim.SGD(params, lr=0.0)
    raise ValueError(f"Unknown optimizer {name!r}; choose 'adamw' or 'sgd'")
