"""Registration of the SpikeCLIP model configs with open_clip, and the one patch of open_clip it needs.

The patch lives in ``open_clip_spike.patches``, under the upstream version it was written for. open_clip has no
model-class registry: ``open_clip.create_model`` builds ``CLIP``, or ``CustomTextCLIP`` when the config says
``"custom_text": true``, by looking the class up in ``open_clip.factory``'s globals. The patch replaces that
global ``CustomTextCLIP`` with a function that builds the class named by the config's ``"model_class"`` key
(``"SpikeCLIP"``) and open_clip's own ``CustomTextCLIP`` for every other config, so open_clip's factory,
checkpoint loading (``pretrained=<file>``, ``hf-hub:``, ``local-dir:``), tokenizer and transforms work unchanged
for SpikeCLIP configs. A SpikeCLIP config therefore needs both ``"custom_text": true`` (so open_clip takes the
CustomTextCLIP branch) and ``"model_class": "SpikeCLIP"``.
"""
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import open_clip
import open_clip.factory as _oc_factory

from .model import SpikeCLIP
from .patches import patch_custom_text_clip

__all__ = ['MODEL_CONFIG_DIR', 'MODEL_CLASSES', 'check_model_config_env', 'register_model_configs',
           'list_spikeclip_models']

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / 'model_configs'

# "model_class" value in a config -> the class that create_model builds for it.
MODEL_CLASSES: Dict[str, Callable] = {'SpikeCLIP': SpikeCLIP}

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
    patch_custom_text_clip(MODEL_CLASSES)
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
