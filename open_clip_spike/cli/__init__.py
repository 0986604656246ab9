"""The ``spikeclip`` command: git-style subcommands, each a module of this package with its own ``main(argv)``.

Every subcommand is also ``python -m open_clip_spike.cli.<module>``; this file only dispatches (and turns an
expected error a command lets through into one line and exit code 2, ``cli.errors``). The modules parse
arguments and call the library (``open_clip_spike``), the training integration (``open_clip_spike.train``) or an
experiment pipeline (``open_clip_spike.experiments``); they hold no logic a Python user cannot call.
"""
import importlib
import sys
from typing import List, Optional

from timm_spike.utils import tune_allocator

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    'info': ('open_clip_spike.cli.info', 'build a registered model and print its parameters, T, input and output shapes'),
    'train': ('open_clip_spike.train.main', 'train SpikeCLIP with open_clip_train: stage 1 alignment or stage 2 dual loss'),
    'zeroshot': ('open_clip_spike.cli.zeroshot', 'zero-shot top-1/top-5 of a model on a dataset from class-name prompts (JSON)'),
    'energy': ('open_clip_spike.cli.energy', 'firing rates, MACs/SOPs and energy per layer of a SpikeCLIP model or timm_spike backbone'),
    'demo': ('open_clip_spike.cli.demo', 'SpikeCLIP end to end on Fashion-MNIST, offline: teacher, 2 stages, zero-shot, energy, Hub'),
    'push': ('open_clip_spike.cli.push', 'publish a SpikeCLIP checkpoint on the Hugging Face Hub (or write the folder)'),
    'sweep-t': ('open_clip_spike.cli.sweep_t', 'zero-shot accuracy and energy per image at several T of one checkpoint: table, JSON, Pareto plot'),
    'paper': ('open_clip_spike.cli.paper', 'steps of the paper recipes (recipes/paper/): data preparation, teacher, model selection, label evaluations'),
    'ablate': ('open_clip_spike.cli.ablate', "the paper's tower comparisons on the demo data: image tower x text tower x T, one table"),
    'bench': ('open_clip_spike.cli.bench', 'speed and memory of the spiking towers vs the same network as an ANN, at T = 1, 2, 4, 8'),
    'bench-cache': ('open_clip_spike.cli.bench_cache', 'epoch time of distillation with the teacher-feature cache vs without'),
    'clip-benchmark': ('open_clip_spike.cli.clip_benchmark', "clip_benchmark's CLI with the SpikeCLIP configs registered (eval in fp32; export-wds writes local datasets such as Fashion-MNIST)"),
    'app': ('open_clip_spike.cli.app', "a local web page that classifies an image zero-shot with one SpikeCLIP and shows its spikes, operations and energy (pip install 'spikeclip[app]')"),
    'export-nir': ('open_clip_spike.cli.export_nir', 'export a spiking tower to NIR (the neuromorphic exchange format) for other simulators and chips'),
    'export-onnx': ('open_clip_spike.cli.export_onnx', 'export a spiking tower to ONNX (through torch.export) and check it with onnxruntime'),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ['usage: spikeclip <command> [options]', '', 'commands:']
    lines += [f'  {name:<{width}}  {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', "Run 'spikeclip <command> --help' for a command's options."]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    if argv[0] == '--version':
        from open_clip_spike import __version__
        print(f'spikeclip {__version__}')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"spikeclip: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    tune_allocator()  # the commands run with glibc keeping freed tensor memory (timm_spike.utils.tune_allocator)
    from open_clip_spike.cli.errors import USER_ERRORS, fail
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except USER_ERRORS as e:  # what a command lets through (a full disk, a denied write...): one line, exit 2
        return fail(f'spikeclip {name}', e)


if __name__ == '__main__':
    sys.exit(main())
