"""Every change this project makes to open_clip and open_clip_train, under one upstream version.

``UPSTREAM_VERSION`` is the open_clip_torch release the patches were written for (open_clip and open_clip_train
ship together). The library's one patch, the model-class dispatch of open_clip's factory, lives here; the training
loop's (``open_clip_spike.train.patches``) import this constant and check it the same way. This module sits in the
library rather than in ``train/`` because ``open_clip_spike.factory`` needs its patch on import, and the library
never imports the training package.
"""
import logging
from typing import Callable, Dict, Optional

import open_clip
import open_clip.factory as _oc_factory
from open_clip.model import CustomTextCLIP

__all__ = ['UPSTREAM_VERSION', 'check_upstream_version', 'patch_custom_text_clip']

_logger = logging.getLogger(__name__)

UPSTREAM_VERSION = '3.3.0'  # the open_clip_torch version every patch of this project was written for


def check_upstream_version(where: str) -> bool:
    """Warn (once per call) when the installed open_clip is not ``UPSTREAM_VERSION``; True when it is."""
    if open_clip.__version__ == UPSTREAM_VERSION:
        return True
    _logger.warning(f'{where} patches open_clip {UPSTREAM_VERSION}; found {open_clip.__version__}')
    return False


def patch_custom_text_clip(model_classes: Dict[str, Callable], check: Optional[Callable] = None,
                           wrap_loader: Optional[Callable[[Callable], Callable]] = None) -> None:
    """Replace ``open_clip.factory.CustomTextCLIP`` with a builder that dispatches on the config's ``model_class``.

    Why: open_clip has no model-class registry; ``create_model`` builds ``CLIP``, or ``CustomTextCLIP`` when the
    config says ``"custom_text": true``, by looking the class up in ``open_clip.factory``'s globals. The builder
    makes the class named by ``"model_class"`` (from ``model_classes``, a live registry) and open_clip's own
    ``CustomTextCLIP`` for every other config, so open_clip's factory, checkpoint loading, tokenizer and
    transforms work unchanged. Retired by a model-class registry in open_clip (none proposed upstream yet).
    ``check(model_cfg, model_class=name)`` runs before a registered class is built (types and size of a config
    read from a file); ``wrap_loader`` wraps the factory's ``load_state_dict`` (the file loader behind
    ``pretrained=<file>``, ``local-dir:`` and ``hf-hub:``; open_clip has no hook to verify a file). Idempotent.
    """
    current = getattr(_oc_factory, 'CustomTextCLIP', None)
    if getattr(current, '_spikeclip_dispatch', False):
        return
    if not check_upstream_version('open_clip_spike.patches.patch_custom_text_clip'):
        _logger.warning("if create_model fails on 'model_class', open_clip's factory no longer looks up "
                        'CustomTextCLIP by name')

    def build(**model_cfg):
        name = model_cfg.pop('model_class', None)
        if name is None:
            return CustomTextCLIP(**model_cfg)
        if name not in model_classes:
            raise ValueError(f'Unknown model_class {name!r} in the model config; known: {sorted(model_classes)}')
        if check is not None:
            check(model_cfg, model_class=name)
        return model_classes[name](**model_cfg)

    build.__name__ = 'CustomTextCLIP'  # create_model logs model_class.__name__
    build._spikeclip_dispatch = True
    _oc_factory.CustomTextCLIP = build
    if wrap_loader is not None:
        _oc_factory.load_state_dict = wrap_loader(_oc_factory.load_state_dict)
