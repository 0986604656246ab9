"""``spikeclip energy MODEL --out DIR``: energy of a SpikeCLIP model (both towers) or a timm_spike backbone.

For a SpikeCLIP model the image tower is measured on real images and the text tower on class prompts, each
with its own report (same schema, ``timm_spike.energy.EnergyReport``); DIR/energy.json holds the image
report with the text report under ``"text"``, DIR/energy.png and DIR/energy_text.png the charts. Any other
name is taken as a timm model (``python -m timm_spike.energy``). ``--T N`` measures at N time steps instead
of the T the model was trained with (SpikeCLIP with readout 'mean'; 'weighted' is refused).
"""
import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import open_clip
import torch
import torch.nn as nn

import timm_spike  # noqa: F401
from open_clip_spike.model import SpikeCLIP
from timm_spike.energy import (
    EnergyConstants, EnergyReport, TeacherEnergy, calibrate_bn, energy_report, teacher_energy)
from timm_spike.energy.cli import (
    HUB_PREFIXES, NO_CHECKPOINT_NOTE, add_energy_args, build_on_meta, check_checkpoint, check_plotting,
    constants_from_args, make_loader, timm_energy_report, write_outputs)
from timm_spike.energy.data import SKIMAGE_PHOTOS, image_dataset
from timm_spike.energy.plot import plot_energy

__all__ = ['SpikeCLIPEnergy', 'spikeclip_energy_report', 'clip_teacher_energy', 'class_prompts', 'main']

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ('a photo of a {}.',)
# Class names for the bundled image sets (what a zero-shot classifier of those images would be given).
BUNDLED_CLASSNAMES = {
    'skimage': tuple(n.replace('_', ' ') for n in SKIMAGE_PHOTOS),
    'digits': ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'),
}


@dataclass
class SpikeCLIPEnergy:
    """Energy reports of the two SpikeCLIP towers: per image (image tower) and per prompt (text tower)."""
    model: str
    image: EnergyReport
    text: EnergyReport

    def to_dict(self) -> Dict[str, Any]:
        """The image report's keys (``energy_mj_per_image`` ...) with the text report under ``"text"``."""
        d = self.image.to_dict()
        d['model'] = self.model
        d['tower'] = 'image'
        d['image_tower'] = self.image.model
        d['text'] = self.text.to_dict()
        return d

    def table(self) -> str:
        return (f'== {self.model}: image tower ==\n{self.image.table()}\n\n'
                f'== {self.model}: text tower ==\n{self.text.table()}')


def class_prompts(classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> List[str]:
    """Every template filled with every class name (the prompts a zero-shot classifier encodes)."""
    if not classnames:
        raise ValueError('No class names to build prompts from')
    return [t.format(c) for c in classnames for t in templates]


def _encode(method: str) -> Callable[[nn.Module, torch.Tensor], Any]:
    return lambda m, x: getattr(m, method)(x)


def clip_teacher_energy(
        name: str,
        prompts: Sequence[str],
        constants: Optional[EnergyConstants] = None,
) -> Dict[str, TeacherEnergy]:
    """Dense energy per image and per prompt of an open_clip ANN (e.g. 'ViT-B-16', the paper's teacher).

    Built with random weights on the meta device: MAC counts depend on shapes only, so no download is needed.
    The image tower is counted at the teacher's own input size.
    """
    if name not in open_clip.list_models():
        raise ValueError(f'Unknown teacher {name!r}: not an open_clip model name')
    model = build_on_meta(lambda: open_clip.create_model(name)).eval()
    device = next(model.parameters()).device
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    tokens = open_clip.get_tokenizer(name)(list(prompts[:1])).to(device)
    c = constants or EnergyConstants()
    return {
        'image': teacher_energy(model, torch.empty(1, 3, *size, device=device), name, _encode('encode_image'), c),
        'text': teacher_energy(model, tokens, name, _encode('encode_text'), c),
    }


def spikeclip_energy_report(
        model: nn.Module,
        images: Any,
        tokens: torch.Tensor,
        *,
        model_name: str = 'SpikeCLIP',
        data_name: str = 'unnamed images',
        prompts_name: str = 'class prompts',
        constants: Optional[EnergyConstants] = None,
        teacher: Optional[Dict[str, TeacherEnergy]] = None,
        batch_size: int = 64,
        progress: bool = True,
        notes: Sequence[str] = (),
) -> SpikeCLIPEnergy:
    """Energy of both towers of a SpikeCLIP model.

    Args:
        model: A SpikeCLIP (``.visual`` spiking image tower, ``.text`` spiking text tower).
        images: Image batches (tensor, or iterable of tensors / (image, label) pairs) at the tower's size.
        tokens: Tokenised prompts [P, context_length] (``open_clip.get_tokenizer(name)(prompts)``).
        teacher: ``clip_teacher_energy`` output for the SNN/teacher ratios.
        batch_size: Prompts per batch for the text tower.
    """
    if tokens.ndim != 2 or not len(tokens):
        raise ValueError(
            f'tokens must be a non-empty [prompts, context_length] tensor, got shape {tuple(tokens.shape)}')
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    common = dict(constants=constants, progress=progress, notes=notes)
    image = energy_report(
        model.visual, images, model_name=f'{model_name} image tower', data_name=data_name,
        input_size=[3, *size], teacher=(teacher or {}).get('image'), **common)
    context = getattr(model.text, 'context_length', tokens.shape[1])
    text = energy_report(
        model.text, list(tokens.split(batch_size)), model_name=f'{model_name} text tower',
        data_name=prompts_name, input_size=[context], sample='prompt', teacher=(teacher or {}).get('text'),
        **common)
    return SpikeCLIPEnergy(model=model_name, image=image, text=text)


def _is_spikeclip(name: str) -> bool:
    """A registered SpikeCLIP config, an hf-hub: repository, or a local-dir: folder in open_clip's layout."""
    if name.startswith('hf-hub:'):
        return True
    if name.startswith('local-dir:'):
        return os.path.isfile(os.path.join(name[len('local-dir:'):], 'open_clip_config.json'))
    cfg = open_clip.get_model_config(name) if name in open_clip.list_models() else None
    return bool(cfg) and cfg.get('model_class') == 'SpikeCLIP'


def _dataset(args, preprocess):
    """Images for the image tower: a bundled set, or a folder (IDX such as Fashion-MNIST, or ImageFolder)."""
    if args.data in BUNDLED_CLASSNAMES or not os.path.isdir(args.data):
        return image_dataset(args.data, preprocess)
    from open_clip_spike.data import build_dataset
    try:
        ds = build_dataset(args.data, split=args.split, transform=preprocess)
    except FileNotFoundError as e:
        raise ValueError(f'Empty dataset: {e}') from e
    return ds, f'{type(ds).__name__} {os.path.abspath(args.data)} ({args.split} split)'


def _class_names(args, dataset) -> List[str]:
    from open_clip_spike.data import dataset_classnames, get_classnames
    if args.classnames:
        if ',' in args.classnames:
            return [c.strip() for c in args.classnames.split(',') if c.strip()]
        return get_classnames(args.classnames)
    if args.data in BUNDLED_CLASSNAMES:
        return list(BUNDLED_CLASSNAMES[args.data])
    names = dataset_classnames(args.data, dataset)
    if not names:
        raise ValueError('No class names for the text-tower prompts: pass --classnames (a built-in set such as '
                         'fashion_mnist, a text file, or "cat,dog,...")')
    return names


def _templates(args) -> Sequence[str]:
    if not args.templates:
        return DEFAULT_TEMPLATES
    from open_clip_spike.data import get_templates
    return get_templates(args.templates)


def _run_spikeclip(args) -> SpikeCLIPEnergy:
    from open_clip_spike.zeroshot import check_inference_T
    kwargs = check_inference_T(args.model, args.T)  # another T than trained: readout 'mean' only
    if args.checkpoint:
        check_checkpoint(args.checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.checkpoint, **kwargs)
    if not isinstance(model, SpikeCLIP):
        raise ValueError(f'{args.model!r} is an open_clip model but not a SpikeCLIP one (no spiking towers); '
                         f'give it as --teacher instead')
    trained = bool(args.checkpoint) or args.model.startswith(HUB_PREFIXES)  # hub names bring their weights
    tokenizer = open_clip.get_tokenizer(args.model)
    constants = constants_from_args(args)
    ds, desc = _dataset(args, preprocess)
    loader = make_loader(ds, args)
    prompts = class_prompts(_class_names(args, ds), _templates(args))
    notes = []
    if args.calibrate_bn == 'yes' or (args.calibrate_bn == 'auto' and not trained):
        calibrate_bn(model.visual, (x for x, _ in loader))
        notes.append(NO_CHECKPOINT_NOTE if not trained else 'BatchNorm statistics calibrated on the data.')
    teacher = clip_teacher_energy(args.teacher, prompts, constants) if args.teacher else None
    return spikeclip_energy_report(
        model.eval(), loader, tokenizer(prompts), model_name=args.model, data_name=desc,
        prompts_name=f'class prompts ("{prompts[0]}", ...)', constants=constants, teacher=teacher,
        batch_size=args.batch_size, progress=not args.no_progress, notes=notes)


def main(argv: Optional[List[str]] = None) -> int:
    prog = 'spikeclip energy'
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a SpikeCLIP model config (e.g. SpikeCLIP-Tiny), hf-hub:ORG/NAME or local-dir:PATH '
                                 'of a published SpikeCLIP, or a timm_spike model (e.g. spikingformer_clip)')
    add_energy_args(p)
    p.add_argument('--split', default='test', choices=('train', 'test'), help='split of an IDX folder (SpikeCLIP)')
    p.add_argument('--classnames', default=None,
                   help='class names for the text-tower prompts (SpikeCLIP): a built-in set (fashion_mnist, '
                        'cifar10, ...), a text file with one name a line, or "cat,dog,..."; default: from --data')
    p.add_argument('--templates', default=None,
                   help="prompt templates (SpikeCLIP): a built-in set or a text file; default 'a photo of a {}.'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        check_plotting()
        if _is_spikeclip(args.model):
            result = _run_spikeclip(args)
            paths = write_outputs(result.image, args.out, payload=result.to_dict())
            paths.append(plot_energy(result.text, os.path.join(args.out, 'energy_text.png')))
            table = result.table()
        else:
            if args.model in open_clip.list_models():
                raise ValueError(f'{args.model!r} is an open_clip model but not a SpikeCLIP one (no spiking towers); '
                                 f'give it as --teacher instead')
            if args.teacher and args.teacher in open_clip.list_models():
                raise ValueError('For a timm backbone, --teacher must be a timm model name')
            report = timm_energy_report(args)
            paths = write_outputs(report, args.out)
            table = report.table()
    except (ValueError, ImportError) as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    print(table)
    print('\nwrote ' + ', '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
