"""``spikeclip paper``."""
import argparse
import json
import logging
import sys
from typing import Any, List, Optional

from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.experiments.paper import DEFAULT_DISTRACTORS, PaperError, finetune_teacher, imagenet_captions_csv, prepare_stage2, relabel_eval, results_table, select_best_epoch, write_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='spikeclip paper', description='Steps of the paper recipes (recipes/paper/).')
    sub = p.add_subparsers(dest='step', required=True)
    sub.add_parser('finetune-teacher', add_help=False,
                   help='stage 2 teacher: open_clip_train with --lock-text (all options are open_clip_train\'s), '
                        'then safetensors export')
    s = sub.add_parser('imagenet-csv', help='stage 1 CSV: ImageNet images with class-name x template captions')
    s.add_argument('--train-dir', required=True, help='ImageFolder of ImageNet train (one folder per synset)')
    s.add_argument('--output', required=True)
    s.add_argument('--classnames', default='imagenet')
    s.add_argument('--templates', default='imagenet')
    s.add_argument('--seed', type=int, default=0)
    s = sub.add_parser('prepare', help='stage 2 data: train.csv + seeded validation split carved from TRAIN')
    s.add_argument('--dataset', required=True, help='cifar10, cifar100, stl10, flowers102, oxford_pets, '
                                                    'caltech101, fashion_mnist, or an IDX / ImageFolder folder')
    s.add_argument('--output', required=True)
    s.add_argument('--classnames', default=None)
    s.add_argument('--templates', default=None)
    s.add_argument('--data-root', default=None)
    s.add_argument('--download', action='store_true')
    s.add_argument('--val-fraction', type=float, default=0.1)
    s.add_argument('--seed', type=int, default=0)
    s = sub.add_parser('select', help='copy the epoch with the best validation top-1 to best.safetensors')
    s.add_argument('--run-dir', required=True)
    s.add_argument('--metric', default='zeroshot-val-top1')
    s.add_argument('--output', default=None)
    s = sub.add_parser('relabel', help='"replace label" / "expand label" zero-shot on a test split')
    s.add_argument('--mode', required=True, choices=('replace', 'expand'))
    s.add_argument('--model', required=True)
    s.add_argument('--pretrained', default=None)
    s.add_argument('--dataset', required=True)
    s.add_argument('--classnames', default=None)
    s.add_argument('--templates', default='simple')
    s.add_argument('--replace', action='append', default=None, metavar='OLD=NEW',
                   help='a replacement (repeatable; default: horse=zebra, ship=boat)')
    s.add_argument('--distractors', default=None,
                   help='comma-separated extra class names (default: ' + ','.join(DEFAULT_DISTRACTORS) + ')')
    s.add_argument('--data-root', default=None)
    s.add_argument('--download', action='store_true')
    s.add_argument('--batch-size', type=int, default=64)
    s.add_argument('--limit', type=int, default=None)
    s.add_argument('--device', default='cpu')
    s.add_argument('--output', default=None, help='write the result as JSON here')
    s = sub.add_parser('table', help='Markdown table of result JSON files')
    s.add_argument('results', nargs='+')
    s.add_argument('--output', default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['finetune-teacher']:  # all other arguments are open_clip_train's
        try:
            return finetune_teacher(argv[1:])
        except PaperError as e:
            print(f'spikeclip paper finetune-teacher: error: {e}', file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        check_model_config_env()
        if args.step == 'imagenet-csv':
            result: Any = imagenet_captions_csv(args.train_dir, args.output, args.classnames, args.templates,
                                                args.seed)
        elif args.step == 'prepare':
            result = prepare_stage2(args.dataset, args.output, args.classnames, args.templates, args.data_root,
                                    args.download, args.val_fraction, args.seed)
        elif args.step == 'select':
            result = select_best_epoch(args.run_dir, args.metric, args.output)
        elif args.step == 'relabel':
            repl = None
            if args.replace:
                bad = [r for r in args.replace if r.count('=') != 1]
                if bad:
                    raise PaperError(f'--replace takes OLD=NEW, got {bad}')
                repl = dict(r.split('=') for r in args.replace)
            distractors = DEFAULT_DISTRACTORS if args.distractors is None else \
                [d.strip() for d in args.distractors.split(',') if d.strip()]
            result = relabel_eval(args.model, args.pretrained, args.dataset, args.mode, args.classnames,
                                  args.templates, repl, distractors, args.data_root, args.download,
                                  args.batch_size, args.limit, args.device)
            if args.output:
                write_text(args.output, json.dumps(result, indent=2) + '\n')
        else:
            text = results_table(args.results)
            if args.output:
                write_text(args.output, text)
            print(text, end='')
            return 0
    except (*USER_ERRORS, PaperError) as e:
        return fail(f'spikeclip paper {args.step}', e)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
