"""``spikeclip zeroshot``: zero-shot top-1/top-5 of a SpikeCLIP (or any open_clip) model on a dataset, as JSON.

``--T N`` evaluates at N time steps instead of the T the model was trained with (readout 'mean').
"""
import argparse
import json
import logging
import sys
from typing import List, Optional

from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.zero_shot import PRECISIONS, zeroshot


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='spikeclip zeroshot',
        description='Zero-shot top-1/top-5 of a SpikeCLIP (or any open_clip) model; prints and writes JSON.')
    p.add_argument('--model', required=True, help='open_clip model name, hf-hub:org/repo or local-dir:path')
    p.add_argument('--pretrained', default=None, help='checkpoint file (.safetensors / .pt) or open_clip tag')
    p.add_argument('--dataset', required=True,
                   help='IDX folder (Fashion-MNIST files), ImageFolder, or torchvision name: '
                        'cifar10, cifar100, stl10, flowers102, oxford_pets, caltech101, fashion_mnist')
    p.add_argument('--split', default='test', choices=('train', 'test'))
    p.add_argument('--classnames', default=None,
                   help='built-in set (fashion_mnist, cifar10, cifar100, stl10, flowers102, oxford_pets, '
                        'caltech101, imagenet) or a text file with one name a line; default: the dataset\'s')
    p.add_argument('--templates', default=None,
                   help='built-in set (as class names, plus simple, imagenet_simple) or a text file with one '
                        'template a line, {} for the class; default: the class-name set\'s, else simple')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--data-root', default=None, help='folder of torchvision datasets')
    p.add_argument('--download', action='store_true', help='let torchvision download a named dataset')
    p.add_argument('--limit', type=int, default=None, help='evaluate only the first N images')
    p.add_argument('--output', default=None, help='write the result as JSON to this file')
    p.add_argument('--T', type=int, default=None,
                   help="time steps at evaluation (SpikeCLIP with readout 'mean'); default: the model's own")
    p.add_argument('--precision', default='fp32', choices=list(PRECISIONS),
                   help='fp32, or bf16 / fp16 autocast of both towers (default fp32)')
    p.add_argument('--no-progress', action='store_true', help='hide progress bars')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        check_model_config_env()
        result = zeroshot(
            args.model, args.pretrained, args.dataset, classnames=args.classnames, templates=args.templates,
            split=args.split, batch_size=args.batch_size, workers=args.workers, device=args.device,
            data_root=args.data_root, download=args.download, limit=args.limit, output=args.output,
            progress=not args.no_progress, T=args.T, precision=args.precision)
    except (*USER_ERRORS, RuntimeError) as e:
        return fail('spikeclip zeroshot', e)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
