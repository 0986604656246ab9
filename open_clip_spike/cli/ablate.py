"""``spikeclip ablate``."""
import argparse
import logging
import sys
from typing import List, Optional

from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.experiments.ablate import GRIDS, IMAGE_TOWERS, TEXT_TOWERS, ablation_grid, run_ablation
from open_clip_spike.experiments import ablate as _experiment


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip ablate', description=_experiment.__doc__.split('\n\n')[0])
    p.add_argument('--out', default='out/ablation', help='output folder (rerun to resume)')
    p.add_argument('--grid', default='paper', choices=GRIDS,
                   help='paper: each image tower with the MLP text tower + Spikingformer with the transformer text '
                        'tower; full: every pair')
    p.add_argument('--image-towers', nargs='+', default=None, help=f'subset of {list(IMAGE_TOWERS)}')
    p.add_argument('--text-towers', nargs='+', default=None, help=f'subset of {list(TEXT_TOWERS)}')
    p.add_argument('--T', type=int, nargs='+', default=[1, 2, 4, 8], help='time steps to evaluate at')
    p.add_argument('--eval-images', type=int, default=1000, help='test images for accuracy and energy')
    p.add_argument('--teacher-pretrained', default=None,
                   help='a trained SpikeCLIP-DemoTeacher checkpoint (e.g. out/demo/teacher.safetensors); '
                        'default: train one in the first run')
    p.add_argument('--data', default=None, help='folder with the Fashion-MNIST IDX files')
    for name, typ, default in (('train-images', int, 3000), ('align-epochs', int, 1), ('dual-epochs', int, 1),
                               ('teacher-epochs', int, 4), ('batch-size', int, 100), ('energy-images', int, 256)):
        p.add_argument(f'--{name}', type=typ, default=default)
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        check_model_config_env()
        pairs = ablation_grid(args.grid, args.image_towers, args.text_towers)
        run_ablation(args.out, pairs, Ts=args.T, eval_images=args.eval_images,
                     teacher_pretrained=args.teacher_pretrained, progress=not args.no_progress, data=args.data,
                     train_images=args.train_images, align_epochs=args.align_epochs, dual_epochs=args.dual_epochs,
                     teacher_epochs=args.teacher_epochs, batch_size=args.batch_size,
                     energy_images=args.energy_images)
    except (*USER_ERRORS, RuntimeError) as e:
        return fail('spikeclip ablate', e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
