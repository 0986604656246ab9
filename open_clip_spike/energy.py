"""Energy of a whole SpikeCLIP: the image tower on real images, the text tower on class prompts.

Each tower gets its own report (same schema, ``timm_spike.energy.EnergyReport``); ``SpikeCLIPEnergy.to_dict``
holds the image report with the text report under ``"text"``. A model can be measured at another T than it was
trained with (readout 'mean'; 'weighted' is refused).
"""
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import open_clip
from open_clip import get_model_preprocess_cfg
from open_clip.factory import parse_model_name
from open_clip.transform import PreprocessCfg, image_transform_v2
import torch
import torch.nn as nn

from timm_spike.energy import (
    EnergyConstants, EnergyReport, TeacherEnergy, energy_report, teacher_energy)
from timm_spike.energy.data import image_dataset
from timm_spike.energy.run import calibrate_if_untrained, check_safetensors_file, image_loader
from timm_spike.utils import build_on_meta

from .checkpoint import model_from_checkpoint
from .data import BUNDLED_CLASSNAMES, build_dataset
from .data.templates import TEMPLATES
from .model import SpikeCLIP
from .factory import register_model_configs
from .zero_shot import check_inference_T, resolve_classnames_templates

__all__ = ['SpikeCLIPEnergy', 'spikeclip_energy_report', 'spikeclip_model_energy', 'clip_teacher_energy',
           'class_prompts', 'is_spikeclip', 'energy_for_publishing', 'PUBLISH_ENERGY_DATA']

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = tuple(TEMPLATES['simple'])


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


def is_spikeclip(name: str) -> bool:
    """A registered SpikeCLIP config, an hf-hub: repository, or a local-dir: folder in open_clip's layout."""
    schema, identifier = parse_model_name(name)
    if schema == 'hf-hub':
        return True
    if schema == 'local-dir':
        return os.path.isfile(os.path.join(identifier, 'open_clip_config.json'))
    cfg = open_clip.get_model_config(name) if name in open_clip.list_models() else None
    return bool(cfg) and cfg.get('model_class') == 'SpikeCLIP'


def _images(data: str, split: str, preprocess):
    """Images for the image tower: a bundled set, or a folder (IDX such as Fashion-MNIST, or ImageFolder)."""
    if data in BUNDLED_CLASSNAMES or not os.path.isdir(data):
        return image_dataset(data, preprocess)
    try:
        ds = build_dataset(data, split=split, transform=preprocess)
    except FileNotFoundError as e:
        raise ValueError(f'Empty dataset: {e}') from e
    return ds, f'{type(ds).__name__} {os.path.abspath(data)} ({split} split)'


def spikeclip_model_energy(
        model_name: str,
        *,
        data: str = 'skimage',
        checkpoint: Optional[str] = None,
        T: Optional[int] = None,
        split: str = 'test',
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        batch_size: int = 8,
        max_samples: Optional[int] = None,
        teacher: Optional[str] = None,
        constants: Optional[EnergyConstants] = None,
        calibrate: str = 'auto',
        progress: bool = True,
) -> SpikeCLIPEnergy:
    """Build SpikeCLIP ``model_name`` and measure both towers: images from ``data``, prompts from its classes.

    Args:
        model_name: A SpikeCLIP config, ``hf-hub:ORG/NAME`` or ``local-dir:PATH``.
        data: 'skimage', 'digits', an IDX folder or an ImageFolder.
        checkpoint: A .safetensors file.
        T: Time steps (default: the model's own; another T needs readout 'mean').
        classnames, templates: As ``zero_shot.resolve_classnames_templates`` takes them (default: the data's).
        teacher: An open_clip ANN (e.g. 'ViT-B-16') to compare with.
        calibrate: Re-estimate BatchNorm statistics on the data first ('auto': for random weights only).
    """
    kwargs = check_inference_T(model_name, T)  # another T than trained: readout 'mean' only
    if checkpoint:
        check_safetensors_file(checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint, **kwargs)
    if not isinstance(model, SpikeCLIP):
        raise ValueError(f'{model_name!r} is an open_clip model but not a SpikeCLIP one (no spiking towers); '
                         f'give it as --teacher instead')
    trained = bool(checkpoint) or parse_model_name(model_name)[0] is not None  # hub names bring their weights
    tokenizer = open_clip.get_tokenizer(model_name)
    constants = constants or EnergyConstants()
    ds, desc = _images(data, split, preprocess)
    loader = image_loader(ds, batch_size, max_samples, data)
    names, temps = resolve_classnames_templates(classnames, templates, data, ds)
    prompts = class_prompts(names, temps)
    notes = calibrate_if_untrained(model.visual, loader, trained, calibrate)
    teacher_e = clip_teacher_energy(teacher, prompts, constants) if teacher else None
    return spikeclip_energy_report(
        model.eval(), loader, tokenizer(prompts), model_name=model_name, data_name=desc,
        prompts_name=f'class prompts ("{prompts[0]}", ...)', constants=constants, teacher=teacher_e,
        batch_size=batch_size, progress=progress, notes=notes)


# Images the energy of a checkpoint published without a report of its own is measured on (bundled, offline).
PUBLISH_ENERGY_DATA = 'skimage'


def _load_for_publishing(model: Union[nn.Module, str, os.PathLike], model_name: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    return model_from_checkpoint(model_name, model)


def energy_for_publishing(
        model: Union[nn.Module, str, os.PathLike],
        model_name: str,
        *,
        data: str = PUBLISH_ENERGY_DATA,
        batch_size: int = 8,
        progress: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Measure the energy of a SpikeCLIP that is being published without an energy report.

    The image tower runs on a bundled image set (default: the scikit-image sample photos), the text tower on the
    prompts of that set's class names. The report's ``data`` and ``notes`` say the figures come from these sample
    images and not from the model's own data, so the model card says so too. The weights are used as they are
    (no BatchNorm calibration: a published checkpoint is a trained one).

    Args:
        model: A SpikeCLIP, or a checkpoint file (``.safetensors`` or an open_clip_train ``.pt``) of ``model_name``.
        model_name: Its open_clip config name (for the tokenizer and, with a checkpoint, the model).
        data: A bundled image set, 'skimage' or 'digits'.
        batch_size: Images / prompts per batch.
        progress: Show progress bars.

    Returns:
        The model (built from the checkpoint when one was given; reuse it for publishing) and the report dict
        (``SpikeCLIPEnergy.to_dict``: the image report with the text report under ``"text"``).

    Raises:
        ValueError: ``data`` is not a bundled set, the model is not a SpikeCLIP, or the checkpoint does not fit.
    """
    if data not in BUNDLED_CLASSNAMES:
        raise ValueError(f'Energy for publishing is measured on a bundled image set ({sorted(BUNDLED_CLASSNAMES)}), '
                         f'got {data!r}; measure on other data with spikeclip energy and pass --energy-report')
    register_model_configs()
    if not isinstance(model, nn.Module) and not is_spikeclip(model_name):
        raise ValueError(f'{model_name!r} is not a registered SpikeCLIP config (known: '
                         f'{", ".join(m for m in open_clip.list_models() if m.startswith("SpikeCLIP"))})')
    net = _load_for_publishing(model, model_name)
    if not isinstance(net, SpikeCLIP):
        raise ValueError(f'{model_name!r} is not a SpikeCLIP model (no spiking towers): there is no energy to measure')
    net.eval()
    preprocess = image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(net)), is_train=False)
    ds, desc = image_dataset(data, preprocess)
    names, temps = resolve_classnames_templates(None, None, data, ds)
    prompts = class_prompts(names, temps)
    tokens = open_clip.get_tokenizer(model_name)(prompts)
    note = (f'Measured by spikeclip push on {len(ds)} sample images bundled with timm_spike ({desc}) because '
            f'no energy report was given; firing rates depend on the input, so measure on your own data with '
            f'spikeclip energy --data DIR for figures that describe it.')
    report = spikeclip_energy_report(
        net, image_loader(ds, batch_size, None, data), tokens, model_name=model_name,
        data_name=f'{desc}, sample images bundled with timm_spike (not this model\'s data)',
        prompts_name=f'class prompts of the sample images ("{prompts[0]}", ...)', batch_size=batch_size,
        progress=progress, notes=[note])
    return net, report.to_dict()
