"""Whether ``torch.jit.script`` can compile a model, checked before open_clip tries (and silently gives up).

open_clip's ``create_model(..., jit=True)`` (``--torchscript`` in open_clip_train) catches any scripting error,
logs a warning and returns the eager model, so a run asked to be scripted trains unscripted without saying so in
its result. SpikeCLIP cannot be scripted:

- spikingjelly 2.0's base classes do not compile: ``StepModule.supported_step_mode`` is annotated
  ``Tuple[str]`` but returns two strings, the ``step_mode`` property setter calls it, and
  ``MemoryModule.forward(*args, **kwargs)`` takes variable arguments (TorchScript refuses all three). Every
  neuron and every multi-step layer of both towers derives from them.
- the fused CPU LIF kernel (``timm_spike.layers.fused_lif``) is a ``torch.autograd.Function``, which
  TorchScript cannot call.
- a failed attempt leaves half-compiled classes behind in TorchScript's compilation unit (a second attempt
  fails with "Can't redefine method"), so this check inspects the modules instead of trying.

PyTorch itself deprecates ``torch.jit.script`` (a ``FutureWarning`` that points to ``torch.compile`` and
``torch.export``), so making spikingjelly scriptable is not worth forking it.
"""
from typing import Optional, Union

import torch.nn as nn

__all__ = ['check_torchscript', 'torchscript_blocker']


def torchscript_blocker(model: nn.Module) -> Optional[str]:
    """The first submodule that ``torch.jit.script`` cannot compile, as ``'name (Class)'``, or None."""
    from spikingjelly.activation_based import base
    for name, module in model.named_modules():
        if isinstance(module, (base.StepModule, base.MemoryModule)):
            return f'{name or "<model>"} ({type(module).__module__}.{type(module).__qualname__})'
    return None


def check_torchscript(model: Union[nn.Module, str]) -> Optional[str]:
    """Why ``torch.jit.script`` cannot compile ``model``, or None when nothing known stands in its way.

    Args:
        model: A model, or an open_clip model name (a SpikeCLIP config, ``hf-hub:`` or ``local-dir:``; only its
            config is read, the model is built on the meta device without weights).

    Returns:
        A one-sentence reason naming the first module that cannot compile and what to do instead, or None
        (then open_clip's own attempt decides; an unknown model name also gives None).
    """
    if isinstance(model, str):
        model = _build_without_weights(model)
        if model is None:
            return None
    blocker = torchscript_blocker(model)
    if blocker is None:
        return None
    return (f'TorchScript cannot compile spiking layers: {blocker} derives from spikingjelly\'s StepModule / '
            f'MemoryModule, whose step-mode property and forward(*args, **kwargs) do not script (and the fused LIF '
            f'is an autograd Function); open_clip would fall back to the unscripted model without saying so. '
            f'Drop --torchscript (torch.jit.script is deprecated by PyTorch in favour of torch.compile)')


def _build_without_weights(name: str) -> Optional[nn.Module]:
    import open_clip
    from timm_spike.utils import build_on_meta
    from .factory import register_model_configs
    from .model import SpikeCLIP
    register_model_configs()
    try:
        cfg = open_clip.get_model_config(name)
    except Exception:  # hf-hub: without network and cache, or a malformed local-dir: open_clip will say
        return None
    if not cfg or cfg.get('model_class') != 'SpikeCLIP':
        return None
    kwargs = {k: v for k, v in cfg.items() if k not in ('model_class', 'custom_text')}
    return build_on_meta(lambda: SpikeCLIP(**kwargs))
