"""``spikeclip clip-benchmark``: clip_benchmark's own command line, with the SpikeCLIP configs registered first.

clip_benchmark loads models only through its own table (``--model_type open_clip`` calls
``open_clip.create_model_and_transforms``), which knows a SpikeCLIP config once ``open_clip_spike`` is imported.
This command does that import and hands its arguments to ``clip_benchmark.cli.main``::

    spikeclip clip-benchmark eval --model SpikeCLIP-Tiny --pretrained tiny.safetensors \\
        --dataset cifar10 --dataset_root DIR --output result.json

Three differences from ``clip_benchmark`` 1.6.2 itself: its top-k accuracy is replaced by one that runs with
numpy >= 2.4 (``open_clip_spike.benchmark.patch_clip_benchmark``), ``eval`` runs in float32 unless ``--amp`` is given (clip_benchmark's
default autocast runs bfloat16 on the CPU, where rounding moves spikes across the threshold; ``--amp`` restores
it), and ``export-wds`` writes a local dataset that clip_benchmark has no builder for (Fashion-MNIST's IDX files,
an ImageFolder) in its WebDataset format, with the class names and templates ``spikeclip zeroshot`` uses::

    spikeclip clip-benchmark export-wds /usr/share/datasets/fashion-mnist out/fmnist --classnames fashion_mnist
    spikeclip clip-benchmark eval --dataset wds/fashion_mnist --dataset_root out/fmnist --model ...
"""
import argparse
import sys
from typing import List, Optional

PROG = 'spikeclip clip-benchmark'
INSTALL_HINT = "clip_benchmark is not installed: pip install 'spikeclip[benchmark]' (or pip install clip_benchmark)"


def _error(message: str) -> int:
    print(f'{PROG}: error: {message}', file=sys.stderr)
    return 2


def _export_wds(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f'{PROG} export-wds',
        description='Write a local dataset (IDX folder such as Fashion-MNIST, ImageFolder) in clip_benchmark\'s '
                    'WebDataset format, for eval --dataset wds/<name> --dataset_root OUT.')
    p.add_argument('data', help='IDX folder (Fashion-MNIST files), ImageFolder, or a torchvision dataset name')
    p.add_argument('out', help='folder to write')
    p.add_argument('--split', default='test', choices=('train', 'test'))
    p.add_argument('--classnames', default=None, help='as spikeclip zeroshot --classnames (default: the dataset\'s)')
    p.add_argument('--templates', default=None, help='as spikeclip zeroshot --templates (default: the class names\')')
    p.add_argument('--limit', type=int, default=None, help='export only the first N images')
    p.add_argument('--overwrite', action='store_true', help='replace an existing OUT/<split>')
    args = p.parse_args(argv)
    from open_clip_spike.benchmark import export_wds
    try:
        out = export_wds(args.data, args.out, split=args.split, classnames=args.classnames, templates=args.templates,
                         limit=args.limit, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return _error(str(e))
    print(f'wrote {out}; evaluate with: {PROG} eval --dataset wds/<name> --dataset_root {out} --model ... '
          f'--pretrained ...')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['export-wds']:
        try:
            import clip_benchmark  # noqa: F401
        except ImportError:
            return _error(INSTALL_HINT)
        return _export_wds(argv[1:])
    try:
        from clip_benchmark import cli as cb_cli
    except ImportError:
        return _error(INSTALL_HINT)
    import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs with open_clip before clip_benchmark loads)
    from open_clip_spike.benchmark import patch_clip_benchmark
    patch_clip_benchmark()

    if argv[:1] == ['eval']:
        if '--amp' in argv:
            argv.remove('--amp')
        elif '--no_amp' not in argv:
            argv.append('--no_amp')
    saved = sys.argv
    sys.argv = [PROG, *argv]  # clip_benchmark's main parses sys.argv itself
    try:
        cb_cli.main()
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    except (AssertionError, ValueError, FileNotFoundError, RuntimeError) as e:
        # clip_benchmark reports bad datasets / splits / models with asserts and plain exceptions
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _error(f'{message} (clip_benchmark {type(e).__name__}; see {PROG} eval --help)')
    finally:
        sys.argv = saved
    return 0


if __name__ == '__main__':
    sys.exit(main())
