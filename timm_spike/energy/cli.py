"""``python -m timm_spike.energy MODEL --out DIR``: energy report of a timm_spike model on real images.

Prints a table and writes DIR/energy.json (the report) and DIR/energy.png (the chart).
"""
import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Subset

from .counting import calibrate_bn
from .data import image_dataset
from .measure import energy_report, teacher_energy
from .plot import plot_energy
from .report import EnergyConstants, EnergyReport, TeacherEnergy

__all__ = ['add_energy_args', 'constants_from_args', 'build_teacher', 'build_on_meta', 'check_checkpoint',
           'check_plotting', 'make_loader', 'HUB_PREFIXES', 'timm_energy_report', 'write_outputs', 'main']

_logger = logging.getLogger(__name__)

# timm and open_clip model names that bring their own weights.
HUB_PREFIXES = ('hf-hub:', 'local-dir:')
NO_CHECKPOINT_NOTE = ('No checkpoint: random weights; BatchNorm statistics were calibrated on the data so the '
                      'firing rates are those of an untrained network, not of a trained one.')


def add_energy_args(p: argparse.ArgumentParser):
    """Options shared by ``python -m timm_spike.energy`` and ``spikeclip energy``."""
    p.add_argument('--checkpoint', default=None, help='weights to load (.safetensors)')
    p.add_argument('--data', default='skimage',
                   help="images to measure on: an ImageFolder directory, 'skimage' (8 bundled photos, "
                        "default) or 'digits' (scikit-learn's 8x8 digits)")
    p.add_argument('--T', type=int, default=None, help="time steps (default: the model's own)")
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--max-samples', type=int, default=None, help='measure on at most this many images')
    p.add_argument('--teacher', default=None,
                   help='an ANN to compare with: a timm model name (for SpikeCLIP an open_clip one, e.g. ViT-B-16)')
    p.add_argument('--e-mac', type=float, default=EnergyConstants.e_mac_pj, help='pJ per MAC (default %(default)s)')
    p.add_argument('--e-ac', type=float, default=EnergyConstants.e_ac_pj, help='pJ per AC (default %(default)s)')
    p.add_argument('--calibrate-bn', choices=('auto', 'yes', 'no'), default='auto',
                   help='re-estimate BatchNorm statistics on the data first (auto: only for random weights, i.e. '
                        'without --checkpoint, hf-hub: or local-dir:)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--out', required=True, help='output folder for energy.json and energy.png')


def constants_from_args(args: argparse.Namespace) -> EnergyConstants:
    c = EnergyConstants()
    if (args.e_mac, args.e_ac) == (c.e_mac_pj, c.e_ac_pj):
        return c
    return EnergyConstants(e_mac_pj=args.e_mac, e_ac_pj=args.e_ac, source='user-supplied')


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the meta device, or on the CPU if the model's __init__ needs values.

    Dense MAC counts need shapes only, so a large teacher costs no memory or time on the meta device.
    """
    try:
        with torch.device('meta'):
            return build()
    except Exception:  # a model whose __init__ reads values; build it for real
        return build()


def build_teacher(name: str, constants: EnergyConstants) -> TeacherEnergy:
    """Energy per image of timm model ``name`` at its own input size (weights do not matter for MACs)."""
    import timm
    if name not in timm.list_models():
        raise ValueError(f'Unknown teacher {name!r}: not a timm model name')
    teacher = build_on_meta(lambda: timm.create_model(name))
    size = timm.data.resolve_model_data_config(teacher)['input_size']
    x = torch.empty((1, *size), device=next(teacher.parameters()).device)
    return teacher_energy(teacher, x, name, constants=constants)


def make_loader(ds, args: argparse.Namespace) -> DataLoader:
    """An in-order DataLoader over ``ds`` honouring --max-samples and --batch-size; ValueError if empty."""
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise ValueError(f'--max-samples must be >= 1, got {args.max_samples}')
        ds = Subset(ds, range(min(args.max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f'Empty dataset: --data {args.data!r} has no images')
    return DataLoader(ds, batch_size=args.batch_size, shuffle=False)


def check_checkpoint(path: str):
    """Accept only an existing .safetensors file (never unpickle a checkpoint)."""
    if not path.endswith('.safetensors'):
        raise ValueError(f'--checkpoint {path!r}: only .safetensors files are loaded (pickles can run code)')
    if not os.path.isfile(path):
        raise ValueError(f'--checkpoint {path!r} does not exist')


def timm_energy_report(args: argparse.Namespace) -> EnergyReport:
    """Build the timm model named in ``args`` and measure it on ``args.data``."""
    import timm
    import timm_spike  # noqa: F401  (registers the spiking models)
    hub = args.model.startswith(HUB_PREFIXES)
    if not hub and args.model not in timm.list_models():
        known = ', '.join(timm.list_models('spikingformer*'))
        raise ValueError(f'Unknown model {args.model!r}; registered spiking models: {known} '
                         f'(or {" / ".join(HUB_PREFIXES)} a folder or Hub repository)')
    kwargs: Dict[str, Any] = {} if args.T is None else {'T': args.T}
    if hub and not args.checkpoint:
        kwargs['pretrained'] = True  # the weights come with the folder / repository
    if args.checkpoint:
        check_checkpoint(args.checkpoint)
        # timm's loader: safetensors, the model's checkpoint_filter_fn (key renames, clear shape errors)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(args.checkpoint)))
    model = timm.create_model(args.model, **kwargs)
    constants = constants_from_args(args)
    cfg = timm.data.resolve_model_data_config(model)
    ds, desc = image_dataset(args.data, timm.data.create_transform(**cfg, is_training=False))
    loader = make_loader(ds, args)
    notes = []
    trained = bool(args.checkpoint) or hub
    if args.calibrate_bn == 'yes' or (args.calibrate_bn == 'auto' and not trained):
        calibrate_bn(model, (x for x, _ in loader))
        notes.append(NO_CHECKPOINT_NOTE if not trained else 'BatchNorm statistics calibrated on the data.')
    teacher = build_teacher(args.teacher, constants) if args.teacher else None
    return energy_report(model, loader, model_name=args.model, data_name=desc, constants=constants,
                         teacher=teacher, progress=not args.no_progress, notes=notes)


def write_outputs(report: EnergyReport, out: str, payload: Optional[Dict[str, Any]] = None) -> List[str]:
    """Write DIR/energy.json (``payload`` if given, else the report) and DIR/energy.png; return the paths."""
    import json
    from .report import atomic_write
    png = plot_energy(report, os.path.join(out, 'energy.png'))  # first: a missing matplotlib leaves no JSON
    json_path = os.path.join(out, 'energy.json')
    atomic_write(json_path, json.dumps(payload if payload is not None else report.to_dict(), indent=2).encode())
    return [json_path, png]


def check_plotting():
    """Fail before measuring, not after, when the chart cannot be drawn."""
    import importlib.util
    if importlib.util.find_spec('matplotlib') is None:
        raise ImportError("The energy chart needs matplotlib: pip install 'spikeclip[plot]'")


def main(argv: Optional[List[str]] = None, prog: str = 'python -m timm_spike.energy') -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a registered timm_spike model (e.g. spikingformer_clip), or local-dir:PATH / '
                                 'hf-hub:ORG/NAME (weights included)')
    add_energy_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        check_plotting()
        report = timm_energy_report(args)
        paths = write_outputs(report, args.out)
    except (ValueError, ImportError) as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    print(report.table())
    print('\nwrote ' + ', '.join(paths))
    return 0
