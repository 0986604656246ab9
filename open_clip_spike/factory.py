"""Registration of the SpikeCLIP model configs with open_clip, and the one patch of open_clip it needs.

The patch lives in ``open_clip_spike.patches``, under the upstream version it was written for. open_clip has no
model-class registry: ``open_clip.create_model`` builds ``CLIP``, or ``CustomTextCLIP`` when the config says
``"custom_text": true``, by looking the class up in ``open_clip.factory``'s globals. The patch replaces that
global ``CustomTextCLIP`` with a function that builds the class named by the config's ``"model_class"`` key
(``"SpikeCLIP"``) and open_clip's own ``CustomTextCLIP`` for every other config, so open_clip's factory,
checkpoint loading (``pretrained=<file>``, ``hf-hub:``, ``local-dir:``), tokenizer and transforms work unchanged
for SpikeCLIP configs. A SpikeCLIP config therefore needs both ``"custom_text": true`` (so open_clip takes the
CustomTextCLIP branch) and ``"model_class": "SpikeCLIP"``. open_clip's file loader is also wrapped there so that a
safetensors file carrying a digest (``timm_spike.integrity``: every weight file this project writes) is checked
before open_clip loads it, and a SpikeCLIP config is checked before it is built (`check_model_config`).
"""
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import open_clip
import open_clip.factory as _oc_factory

from timm_spike.integrity import verifying_loader

from .model import SpikeCLIP
from .patches import patch_custom_text_clip

__all__ = ['MODEL_CONFIG_DIR', 'MODEL_CLASSES', 'check_model_config', 'check_model_config_env',
           'list_spikeclip_models', 'register_model_configs']

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / 'model_configs'

# "model_class" value in a config -> the class that create_model builds for it.
MODEL_CLASSES: Dict[str, Callable] = {'SpikeCLIP': SpikeCLIP}

_reference_types = None
_checked: Dict[str, object] = {}


def check_model_config(model_cfg: Dict, where: str = 'model config', model_class: str = 'SpikeCLIP',
                       max_params: Optional[float] = None, max_activation_bytes: Optional[float] = None):
    """Check a SpikeCLIP config before it is built: value types by key (against the shipped configs), then the
    parameter count and one sample's layer outputs estimated on the meta device (``timm_spike.bounds``; limits:
    the arguments, ``$SPIKECLIP_MAX_PARAMS``, ``$SPIKECLIP_MAX_ACTIVATION_BYTES``). Raises a one-line
    ``ValueError`` naming the key or the limit; returns ``(parameters, activation bytes or None)``. Each
    distinct config is measured once per process.
    """
    import json

    import torch

    from timm_spike.bounds import check_numbers_not_strings, check_size, check_types, config_types, size_limits
    global _reference_types
    if _reference_types is None:
        _reference_types = config_types(json.loads(p.read_text()) for p in sorted(MODEL_CONFIG_DIR.glob('*.json')))
    cfg = {k: v for k, v in model_cfg.items() if k not in ('model_class', 'custom_text', 'cast_dtype')}
    key = json.dumps([cfg, model_class, size_limits(max_params, max_activation_bytes)], sort_keys=True, default=str)
    if key in _checked:
        return _checked[key]
    check_types(cfg, _reference_types, where)
    check_numbers_not_strings(cfg, where)  # keys the shipped configs do not use
    cls = MODEL_CLASSES[model_class]
    extra = {k: model_cfg[k] for k in ('cast_dtype',) if k in model_cfg}
    vision, text = cfg.get('vision_cfg') or {}, cfg.get('text_cfg') or {}
    size = vision.get('image_size', 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)

    def forward(model):
        model.encode_image(torch.empty(1, 3, h, w, device='meta'))
        model.encode_text(torch.zeros(1, text.get('context_length', 77), dtype=torch.long, device='meta'))

    result = check_size(lambda c: cls(**c, **extra), cfg, where, forward=forward, max_params=max_params,
                        max_activation_bytes=max_activation_bytes)
    _checked[key] = result
    return result


CONFIG_PATH_ENV = 'SPIKECLIP_MODEL_CONFIGS'  # extra config folders/files, os.pathsep-separated


_registered_once = False


def register_model_configs(strict: Optional[bool] = None) -> None:
    """Add open_clip_spike's model configs to open_clip's registry (idempotent) and install the factory patch.

    Folders or JSON files named in ``$SPIKECLIP_MODEL_CONFIGS`` (separated by ``os.pathsep``) are registered
    too, so configs written at run time (``spikeclip ablate``) reach every subprocess that imports the package.
    A name that does not exist raises ``FileNotFoundError`` when ``strict``; otherwise it is skipped with a warning.
    ``strict=None`` is lenient on the first call of the process (the one ``import open_clip_spike`` makes, so that
    importing never fails on a bad environment; the commands then refuse it in one line through
    `check_model_config_env`) and strict afterwards.
    """
    global _registered_once
    if strict is None:
        strict = _registered_once
    _registered_once = True
    patch_custom_text_clip(MODEL_CLASSES, check=check_model_config, wrap_loader=verifying_loader)
    if MODEL_CONFIG_DIR not in _oc_factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    for extra in filter(None, os.environ.get(CONFIG_PATH_ENV, '').split(os.pathsep)):
        path = Path(extra)
        if not path.exists():
            if strict:
                check_model_config_env()
            _logger.debug('$%s names %r, which does not exist: skipped', CONFIG_PATH_ENV, extra)
            continue
        if path not in _oc_factory._MODEL_CONFIG_PATHS:
            open_clip.add_model_config(path)


def check_model_config_env() -> None:
    """Raise a one-line ``FileNotFoundError`` when ``$SPIKECLIP_MODEL_CONFIGS`` names a path that does not exist."""
    missing = [p for p in filter(None, os.environ.get(CONFIG_PATH_ENV, '').split(os.pathsep)) if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f'${CONFIG_PATH_ENV} names {", ".join(map(repr, missing))}, which does not exist: set it to folders or '
            f'JSON files of open_clip model configs (separated by {os.pathsep!r}), or unset it')


def list_spikeclip_models() -> List[str]:
    """Names of the model configs this package ships (all registered with open_clip on import)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))
