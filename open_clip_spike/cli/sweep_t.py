"""``spikeclip sweep-t``."""
import argparse
import logging
import os
import sys
from typing import List, Optional

from dataclasses import asdict
from timm_spike.energy import EnergyConstants
from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.experiments.sweep import sweep_markdown, sweep_t, write_sweep
from open_clip_spike.experiments import sweep as _experiment
from open_clip.factory import parse_model_name
from open_clip_spike.checkpoint import check_checkpoint_file
from open_clip_spike.factory import check_model_config_env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='spikeclip sweep-t', description=_experiment.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='SpikeCLIP model config, hf-hub:org/repo or local-dir:path')
    p.add_argument('--pretrained', nargs='+', default=None,
                   help='checkpoint file(s) (.safetensors / .pt) of the model; several give one curve each')
    p.add_argument('--labels', nargs='+', default=None,
                   help='names of the checkpoints\' curves (default: their file names)')
    p.add_argument('--dataset', required=True, help='IDX folder (Fashion-MNIST files), ImageFolder or torchvision name')
    p.add_argument('--split', default='test', choices=('train', 'test'))
    p.add_argument('--classnames', default=None, help="built-in set or text file; default: the dataset's")
    p.add_argument('--templates', default=None, help="built-in set or text file; default: the class-name set's")
    p.add_argument('--T', type=int, nargs='+', default=[1, 2, 4, 8], help='time steps to evaluate at (default 1 2 4 8)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--limit', type=int, default=None, help='use only the first N images')
    p.add_argument('--device', default='cpu')
    p.add_argument('--data-root', default=None, help='folder of torchvision datasets')
    p.add_argument('--out', required=True, help='output folder for sweep_t.{md,csv,json,png}')
    p.add_argument('--no-progress', action='store_true', help='hide progress bars')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    prog = 'spikeclip sweep-t'
    try:
        check_model_config_env()
        import importlib.util
        if importlib.util.find_spec('matplotlib') is None:  # fail before measuring, not after
            raise ImportError("The sweep plot needs matplotlib: pip install 'spikeclip[plot]'")
        if args.pretrained is None and parse_model_name(args.model)[0] is None:
            raise ValueError('--pretrained is required (a trained checkpoint): random weights have no accuracy '
                             'to trade against energy')
        checkpoints = args.pretrained or [None]
        for ckpt in checkpoints:  # every file, before the first model is built
            check_checkpoint_file(ckpt)
        labels = args.labels or ([os.path.splitext(os.path.basename(c))[0] for c in checkpoints]
                                 if len(checkpoints) > 1 else [''])
        if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
            raise ValueError(f'--labels needs one distinct name per --pretrained checkpoint ({len(checkpoints)}), '
                             f'got {labels}')
        points = []
        for ckpt, label in zip(checkpoints, labels):
            points += sweep_t(
                args.model, ckpt, args.dataset, args.T, classnames=args.classnames, templates=args.templates,
                split=args.split, batch_size=args.batch_size, limit=args.limit, device=args.device,
                data_root=args.data_root, progress=not args.no_progress, label=label)
        meta = dict(model=args.model, pretrained=args.pretrained, dataset=args.dataset, split=args.split,
                    energy='image tower, per image (timm_spike.energy)', constants=asdict(EnergyConstants()))
        paths = write_sweep(points, args.out, meta, title=f'{args.model}: accuracy and energy over T')
    except USER_ERRORS as e:
        return fail(prog, e)
    print(sweep_markdown(points, f'{args.model}: accuracy and energy over T'))
    print('wrote ' + ', '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
