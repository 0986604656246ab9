"""``spikeclip energy MODEL --out DIR``: energy of a SpikeCLIP model (both towers) or a timm_spike backbone.

For a SpikeCLIP model the image tower is measured on real images and the text tower on class prompts, each
with its own report (same schema, ``timm_spike.energy.EnergyReport``); DIR/energy.json holds the image
report with the text report under ``"text"``, DIR/energy.png and DIR/energy_text.png the charts. Any other
name is taken as a timm model. ``--T N`` measures at N time steps instead of the T the model was trained
with (SpikeCLIP with readout 'mean'; 'weighted' is refused).
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

import open_clip

from open_clip_spike.checkpoint import check_checkpoint_file
from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.energy import is_spikeclip, spikeclip_model_energy
from open_clip_spike.factory import check_model_config_env
from timm_spike.energy import EnergyConstants, plot_energy
from timm_spike.energy.run import CALIBRATE_MODES, require_matplotlib, timm_model_energy, write_report

PROG = 'spikeclip energy'


def add_energy_args(p: argparse.ArgumentParser) -> None:
    """The measurement options (shared with the commands that measure energy)."""
    p.add_argument('--checkpoint', default=None, help='weights to load (.safetensors)')
    p.add_argument('--data', default='skimage',
                   help="images to measure on: an ImageFolder or IDX directory, 'skimage' (8 bundled photos, "
                        "default) or 'digits' (scikit-learn's 8x8 digits)")
    p.add_argument('--T', type=int, default=None, help="time steps (default: the model's own)")
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--max-samples', type=int, default=None, help='measure on at most this many images')
    p.add_argument('--teacher', default=None,
                   help='an ANN to compare with: a timm model name (for SpikeCLIP an open_clip one, e.g. ViT-B-16)')
    p.add_argument('--e-mac', type=float, default=EnergyConstants.e_mac_pj, help='pJ per MAC (default %(default)s)')
    p.add_argument('--e-ac', type=float, default=EnergyConstants.e_ac_pj, help='pJ per AC (default %(default)s)')
    p.add_argument('--calibrate-bn', choices=CALIBRATE_MODES, default='auto',
                   help='re-estimate BatchNorm statistics on the data first (auto: only for random weights, i.e. '
                        'without --checkpoint, hf-hub: or local-dir:)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--out', required=True, help='output folder for energy.json and energy.png')


def constants_from_args(args: argparse.Namespace) -> EnergyConstants:
    c = EnergyConstants()
    if (args.e_mac, args.e_ac) == (c.e_mac_pj, c.e_ac_pj):
        return c
    return EnergyConstants(e_mac_pj=args.e_mac, e_ac_pj=args.e_ac, source='user-supplied')


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a SpikeCLIP model config (e.g. SpikeCLIP-Tiny), hf-hub:ORG/NAME or local-dir:PATH '
                                 'of a published SpikeCLIP, or a timm_spike model (e.g. spikingformer_clip)')
    add_energy_args(p)
    p.add_argument('--split', default='test', choices=('train', 'test'), help='split of an IDX folder (SpikeCLIP)')
    p.add_argument('--classnames', default=None,
                   help='class names for the text-tower prompts (SpikeCLIP): a built-in set (fashion_mnist, '
                        'cifar10, ...), a text file with one name a line, or "cat,dog,..."; default: from --data')
    p.add_argument('--templates', default=None,
                   help="prompt templates (SpikeCLIP): a built-in set or a text file; default: the class-name "
                        "set's, else 'a photo of a {}.'")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    common = dict(data=args.data, checkpoint=args.checkpoint, T=args.T, batch_size=args.batch_size,
                  max_samples=args.max_samples, teacher=args.teacher, constants=constants_from_args(args),
                  calibrate=args.calibrate_bn, progress=not args.no_progress)
    try:
        check_model_config_env()
        if args.checkpoint and args.checkpoint.endswith('.safetensors'):  # other suffixes: the measurement says why
            check_checkpoint_file(args.checkpoint)  # missing or truncated: one line, before any model is built
        for name, value in (('--batch-size', args.batch_size), ('--max-samples', args.max_samples)):
            if value is not None and value < 1:
                raise ValueError(f'{name} must be >= 1, got {value}')
        require_matplotlib()
        if is_spikeclip(args.model):
            result = spikeclip_model_energy(args.model, split=args.split, classnames=args.classnames,
                                            templates=args.templates, **common)
            paths = write_report(result.image, args.out, payload=result.to_dict())
            paths.append(plot_energy(result.text, os.path.join(args.out, 'energy_text.png')))
            table = result.table()
        else:
            if args.model in open_clip.list_models():
                raise ValueError(f'{args.model!r} is an open_clip model but not a SpikeCLIP one (no spiking towers); '
                                 f'give it as --teacher instead')
            if args.teacher and args.teacher in open_clip.list_models():
                raise ValueError('For a timm backbone, --teacher must be a timm model name')
            report = timm_model_energy(args.model, **common)
            paths = write_report(report, args.out)
            table = report.table()
    except USER_ERRORS as e:
        return fail(PROG, e)
    print(table)
    print('\nwrote ' + ', '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
