"""Energy of a timm model by name, measured on a bundled or local image set, and the report's files on disk.

The pieces a command needs (``spikeclip energy``), callable from Python: build the model (random weights with
calibrated BatchNorm, a safetensors checkpoint, or ``hf-hub:``/``local-dir:`` weights), load the images, measure,
write ``energy.json`` + ``energy.png``.
"""
import importlib.util
import json
import os
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..utils import atomic_write, build_on_meta
from .counting import calibrate_bn
from .data import image_dataset
from .measure import energy_report, teacher_energy
from .plot import plot_energy
from .report import EnergyConstants, EnergyReport, TeacherEnergy

__all__ = ['HUB_PREFIXES', 'NO_CHECKPOINT_NOTE', 'calibrate_if_untrained', 'check_safetensors_file', 'image_loader',
           'require_matplotlib', 'timm_model_energy', 'timm_teacher_energy', 'write_report']

# timm and open_clip model names that bring their own weights.
HUB_PREFIXES = ('hf-hub:', 'local-dir:')
NO_CHECKPOINT_NOTE = ('No checkpoint: random weights; BatchNorm statistics were calibrated on the data so the '
                      'firing rates are those of an untrained network, not of a trained one.')
CALIBRATE_MODES = ('auto', 'yes', 'no')


def timm_teacher_energy(name: str, constants: Optional[EnergyConstants] = None) -> TeacherEnergy:
    """Energy per image of timm model ``name`` at its own input size (weights do not matter for MACs)."""
    import timm
    if name not in timm.list_models():
        raise ValueError(f'Unknown teacher {name!r}: not a timm model name')
    teacher = build_on_meta(lambda: timm.create_model(name))
    size = timm.data.resolve_model_data_config(teacher)['input_size']
    x = torch.empty((1, *size), device=next(teacher.parameters()).device)
    return teacher_energy(teacher, x, name, constants=constants or EnergyConstants())


def image_loader(ds: Dataset, batch_size: int = 8, max_samples: Optional[int] = None,
                 data_name: str = 'the data') -> DataLoader:
    """An in-order DataLoader over at most ``max_samples`` images of ``ds``; ValueError if empty or misconfigured."""
    if batch_size < 1:
        raise ValueError(f'batch size must be >= 1, got {batch_size}')
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f'max samples must be >= 1, got {max_samples}')
        ds = Subset(ds, range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f'Empty dataset: {data_name!r} has no images')
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def check_safetensors_file(path: str) -> None:
    """Accept only an existing .safetensors file (never unpickle a checkpoint)."""
    if not path.endswith('.safetensors'):
        raise ValueError(f'checkpoint {path!r}: only .safetensors files are loaded (pickles can run code)')
    if not os.path.isfile(path):
        raise ValueError(f'checkpoint {path!r} does not exist')


def _check_calibrate(calibrate: str) -> None:
    if calibrate not in CALIBRATE_MODES:
        raise ValueError(f'calibrate must be one of {CALIBRATE_MODES}, got {calibrate!r}')


def calibrate_if_untrained(model: torch.nn.Module, loader: DataLoader, trained: bool,
                           calibrate: str = 'auto') -> List[str]:
    """Re-estimate BatchNorm statistics on the loader's images when asked to ('yes'), or for random weights
    ('auto' and not ``trained``); return the report notes that say so."""
    _check_calibrate(calibrate)
    if calibrate == 'yes' or (calibrate == 'auto' and not trained):
        calibrate_bn(model, (x for x, _ in loader))
        return [NO_CHECKPOINT_NOTE if not trained else 'BatchNorm statistics calibrated on the data.']
    return []


def timm_model_energy(
        model_name: str,
        *,
        data: str = 'skimage',
        checkpoint: Optional[str] = None,
        T: Optional[int] = None,
        batch_size: int = 8,
        max_samples: Optional[int] = None,
        teacher: Optional[str] = None,
        constants: Optional[EnergyConstants] = None,
        calibrate: str = 'auto',
        progress: bool = True,
) -> EnergyReport:
    """Build timm model ``model_name`` and measure its energy on ``data``.

    Args:
        model_name: A registered timm model, or ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` (weights included).
        data: An ImageFolder directory, 'skimage' (bundled photos) or 'digits' (scikit-learn's digits).
        checkpoint: A .safetensors file to load through timm's loader (key renames, clear shape errors).
        T: Time steps (default: the model's own).
        teacher: A timm model name to compare with (dense MACs at its own input size).
        calibrate: Re-estimate BatchNorm statistics on the data first: 'auto' (only for random weights),
            'yes' or 'no'.
    """
    import timm
    from timm.models import parse_model_name

    import timm_spike  # noqa: F401  (registers the spiking models)
    _check_calibrate(calibrate)
    hub = parse_model_name(model_name)[0] is not None  # timm's own parsing of hf-hub: / local-dir:
    if not hub and model_name not in timm.list_models():
        known = ', '.join(timm.list_models('spikingformer*'))
        raise ValueError(f'Unknown model {model_name!r}; registered spiking models: {known} '
                         f'(or {" / ".join(HUB_PREFIXES)} a folder or Hub repository)')
    kwargs: Dict[str, Any] = {} if T is None else {'T': T}
    if hub and not checkpoint:
        kwargs['pretrained'] = True  # the weights come with the folder / repository
    if checkpoint:
        check_safetensors_file(checkpoint)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(checkpoint)))
    model = timm.create_model(model_name, **kwargs)
    constants = constants or EnergyConstants()
    cfg = timm.data.resolve_model_data_config(model)
    ds, desc = image_dataset(data, timm.data.create_transform(**cfg, is_training=False))
    loader = image_loader(ds, batch_size, max_samples, data)
    notes = calibrate_if_untrained(model, loader, bool(checkpoint) or hub, calibrate)
    teacher_e = timm_teacher_energy(teacher, constants) if teacher else None
    return energy_report(model, loader, model_name=model_name, data_name=desc, constants=constants,
                         teacher=teacher_e, progress=progress, notes=notes)


def require_matplotlib() -> None:
    """Fail before measuring, not after, when the chart cannot be drawn."""
    if importlib.util.find_spec('matplotlib') is None:
        raise ImportError("The energy chart needs matplotlib: pip install 'spikeclip[plot]'")


def write_report(report: EnergyReport, out: str, payload: Optional[Dict[str, Any]] = None) -> List[str]:
    """Write OUT/energy.json (``payload`` if given, else the report) and OUT/energy.png; return the paths."""
    png = plot_energy(report, os.path.join(out, 'energy.png'))  # first: a missing matplotlib leaves no JSON
    json_path = os.path.join(out, 'energy.json')
    atomic_write(json_path, json.dumps(payload if payload is not None else report.to_dict(), indent=2).encode())
    return [json_path, png]
