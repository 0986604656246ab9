"""``spikeclip demo``."""
import argparse
import logging
import os
import sys
from typing import List, Optional

from timm_spike.layers import LIF_IMPLS
from open_clip_spike.cli.errors import USER_ERRORS, fail
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.experiments.demo import DEBIAN_FASHION_MNIST, DemoConfig, DemoError, run_demo
from open_clip_spike.experiments import demo as _experiment


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip demo', description=_experiment.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='out/demo', help='output folder (default out/demo); rerun to resume')
    p.add_argument('--data', default=None, help=f'folder with the Fashion-MNIST IDX files (default {DEBIAN_FASHION_MNIST})')
    p.add_argument('--quick', action='store_true', help='a one-minute smoke run on a small subset')
    p.add_argument('--teacher', default=None, help='teacher open_clip model (default SpikeCLIP-DemoTeacher, trained here)')
    p.add_argument('--teacher-pretrained', default=None,
                   help='use this teacher (a tag, e.g. openai, or a checkpoint file) instead of training one')
    p.add_argument('--student', default=None, help='student model config (default SpikeCLIP-Tiny)')
    for name, typ in (('train-images', int), ('test-images', int), ('energy-images', int), ('teacher-epochs', int),
                      ('align-epochs', int), ('dual-epochs', int), ('batch-size', int), ('workers', int),
                      ('kl-weight', float), ('rate-weight', float), ('rate-target', float), ('seed', int)):
        p.add_argument(f'--{name}', type=typ, default=None)
    p.add_argument('--precision', default=None, choices=('fp32', 'amp', 'amp_bf16', 'bf16'))
    p.add_argument('--lif-impl', default=None, choices=LIF_IMPLS,
                   help='spiking neuron implementation (default auto: fused on CPU, spikingjelly on GPU)')
    p.add_argument('--bf16-eval', dest='bf16_eval', action='store_true', default=None,
                   help='also evaluate both models under bf16 autocast (default: where the CPU has native bf16)')
    p.add_argument('--no-bf16-eval', dest='bf16_eval', action='store_false', default=None,
                   help='skip the extra zero-shot evaluations under bf16 autocast')
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    kw = {k: v for k, v in vars(args).items() if v is not None and k not in ('quick', 'no_progress')}
    kw['progress'] = not args.no_progress
    cfg = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    if cfg.teacher_pretrained is None and cfg.teacher != DemoConfig.teacher:
        p.error('--teacher other than the demo teacher needs --teacher-pretrained (e.g. --teacher ViT-B-16 '
                '--teacher-pretrained openai)')
    try:
        check_model_config_env()
        summary = run_demo(cfg)
    except (*USER_ERRORS, DemoError) as e:
        return fail('spikeclip demo', e)
    except KeyboardInterrupt:
        print(f'spikeclip demo: interrupted; rerun the same command to continue ({cfg.out} keeps every finished '
              f'stage and epoch)', file=sys.stderr)
        return 130
    print(f"\nwrote {os.path.join(cfg.out, 'summary.json')} and {os.path.join(cfg.out, 'summary.png')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
