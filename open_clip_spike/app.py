"""A zero-shot page for one SpikeCLIP: the function behind it (``ZeroShotApp.classify``) and its Gradio page.

The model is chosen once, when the page starts: a checkpoint file, a ``local-dir:`` folder or an ``hf-hub:``
repository (nothing on the page can name a path or another model). For an image and a list of class names,
``classify`` returns the top-k probabilities and, for this image, the firing rate of every neuron layer of the
image tower, its MACs and SOPs, the estimated energy beside the same network as an ANN (and beside the teacher
and the published figures when the checkpoint carries an energy report), and the measured time of the forward.

The prediction is that of ``spikeclip zeroshot`` for the same image and classes: the same preprocessing (the
model's own transform), the same class names and templates (``zero_shot.resolve_classnames_templates``) and the
same classifier (``zero_shot.build_classifier``). Class embeddings are cached per class list and templates.

Python::

    from open_clip_spike.app import ZeroShotApp
    app = ZeroShotApp('local-dir:out/demo/hub')
    result = app.classify('shoe.png', 'fashion_mnist')     # or ['cat', 'dog'], 'cat, dog'
    result.label, result.probabilities, result.firing_rates, result.energy_mj, result.seconds

Command line (Gradio is an optional extra: ``pip install 'spikeclip[app]'``)::

    spikeclip app --model local-dir:out/demo/hub          # http://127.0.0.1:7860

One module, longer than the house's ~500 lines: the function and the page that shows it, with the input checks
both share; Gradio is imported only by the page's functions.
"""
import base64
import io
import json
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from timm_spike.energy import EnergyConstants, ann_equivalent, energy_report
from timm_spike.layers import inference_form

from .checkpoint import check_checkpoint_file
from .data import CLASSNAMES
from .factory import register_model_configs
from .model import SpikeCLIP
from .zero_shot import build_classifier, eval_mode, resolve_classnames_templates

if TYPE_CHECKING:
    from PIL import Image

__all__ = ['ZeroShotApp', 'ZeroShotResult', 'load_image', 'parse_names', 'parse_templates', 'build_demo',
           'launch', 'example_images', 'require_gradio', 'APP_EXTRA', 'CLASSNAME_SETS', 'MAX_UPLOAD']

_logger = logging.getLogger(__name__)

APP_EXTRA = "pip install 'spikeclip[app]'"
MAX_UPLOAD = '25mb'  # Gradio refuses larger uploads before they reach the page
# Class-name sets the page offers (the sets the project ships, in one place: open_clip_spike.data).
CLASSNAME_SETS = tuple(CLASSNAMES)
# Prompts whose text-tower operations are counted per class list (the energy per prompt is their mean).
TEXT_ENERGY_PROMPTS = 32
_EXAMPLES_DIR = Path(__file__).parent / 'app_examples'
_SKIMAGE_EXAMPLES = ('chelsea.png', 'coffee.png', 'astronaut.png')


# --------------------------------------------------------------------------------------------------------------
# Inputs


def _pixel_limit() -> Optional[int]:
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit, read (never changed) here


def load_image(source: Any, input_size: int = 224) -> 'Image.Image':
    """An RGB PIL image from a PIL image, an array, bytes or a file, refused with a one-line ValueError when bad.

    The checks: PIL can read it, it is within PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``,
    kept as PIL sets it; PIL's warning above the limit is an error here), it has pixels, and scaling its short
    side to ``input_size`` (what the model's transform does) stays within the same limit. Conversion to RGB is
    torchvision's ``pil_loader``'s, the loader of ``spikeclip zeroshot``'s folders.
    """
    from PIL import Image, UnidentifiedImageError
    limit = _pixel_limit()
    if isinstance(source, Image.Image):
        img = source
        if limit and img.width * img.height > limit:
            raise ValueError(f'The image has {img.width * img.height:,} pixels ({img.width}x{img.height}), more than '
                             f"PIL's decompression-bomb limit of {limit:,}: make it smaller")
    else:
        if hasattr(source, '__array_interface__'):
            import numpy as np
            arr = np.asarray(source)
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
                raise ValueError(f'An image array must be uint8 [H, W] or [H, W, 1|3|4], got {arr.dtype} '
                                 f'{list(arr.shape)}')
            return load_image(Image.fromarray(arr.squeeze(2) if arr.ndim == 3 and arr.shape[2] == 1 else arr),
                              input_size)
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ValueError(f'Image file not found: {path}')
            data = path.read_bytes()
        else:
            raise ValueError(f'An image must be a PIL image, an array, bytes or a file, got {type(source).__name__}')
        if not data:
            raise ValueError('The image file is empty (0 bytes)')
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ValueError(f"The image is larger than PIL's decompression-bomb limit of {limit:,} pixels "
                                 f'({e}); make it smaller') from None
            except UnidentifiedImageError:
                raise ValueError('The file is not an image that PIL can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)'
                                 ) from None
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f'The image could not be decoded ({e}); it may be truncated or damaged') from None
    if img.width < 1 or img.height < 1:
        raise ValueError(f'The image has no pixels ({img.width}x{img.height})')
    scaled = img.width * img.height * (input_size / min(img.width, img.height)) ** 2
    if limit and scaled > limit:
        raise ValueError(f'The image is {img.width}x{img.height}: with its short side scaled to {input_size} '
                         f"it would have {scaled:,.0f} pixels, more than PIL's limit of {limit:,}; crop it first")
    if img.mode == 'RGB':
        return img
    try:
        return img.convert('RGB')
    except (OSError, ValueError) as e:
        raise ValueError(f'The image (mode {img.mode}) cannot be converted to RGB: {e}') from None


def parse_names(text: str) -> List[str]:
    """Class names typed on the page: separated by commas or new lines, blanks dropped (never a file name)."""
    return [n.strip() for line in (text or '').splitlines() for n in line.split(',') if n.strip()]


def parse_templates(text: str) -> List[str]:
    """Templates typed on the page: one a line, with ``{}`` where the class name goes; blank lines dropped."""
    return [t.strip() for t in (text or '').splitlines() if t.strip()]


# --------------------------------------------------------------------------------------------------------------
# The model and the classification


@dataclass
class ZeroShotResult:
    """One classification: top-k classes, and for this image the image tower's firing rates, operations, energy.

    Energies are millijoules per image (image tower) or per prompt (text tower), E = E_MAC x MACs + E_AC x SOPs
    (``timm_spike.energy``); ``ann_*`` is the same network as an ANN (T = 1, every op a MAC); ``published`` holds the
    figures of the checkpoint's own energy report (over its data, with the teacher), when it has one.
    """
    label: str
    probabilities: Dict[str, float]           # top-k, highest first
    classnames: List[str]
    templates: List[str]
    T: int
    firing_rates: Dict[str, float]            # image tower, per neuron layer, this image
    mean_firing_rate: Optional[float]
    macs: float
    sops: float
    energy_mj: float
    ann_macs: float
    ann_energy_mj: float
    text: Dict[str, Any]                      # text tower per prompt: energy_mj, ann_energy_mj, macs, sops, prompts
    published: Optional[Dict[str, Any]]
    seconds: float                            # forward of the image tower on this image
    text_seconds: float                       # class embeddings (0 when they came from the cache)
    cached: bool
    device: str
    constants: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _published_energy(folder: Optional[Path], checkpoint: Optional[str]) -> Optional[Dict[str, Any]]:
    """The energy figures a checkpoint was published with: its folder's ``energy.json`` (the report
    ``spikeclip push`` writes) or, for a bare safetensors file, the figures in its metadata."""
    report = None
    if folder is not None and (folder / 'energy.json').is_file():
        try:
            report = json.loads((folder / 'energy.json').read_text())
        except (OSError, json.JSONDecodeError) as e:
            _logger.warning('Ignoring %s: %s', folder / 'energy.json', e)
    if isinstance(report, dict) and isinstance(report.get('energy_mj_per_image'), (int, float)):
        text = report.get('text') if isinstance(report.get('text'), dict) else {}
        teacher = report.get('teacher') if isinstance(report.get('teacher'), dict) else {}
        return dict(source='energy.json', data=report.get('data'), num_samples=report.get('num_samples'),
                    T=report.get('T'), energy_mj=report['energy_mj_per_image'],
                    ann_energy_mj=report.get('ann_energy_mj_per_image'),
                    teacher=teacher.get('model'), teacher_energy_mj=report.get('teacher_energy_mj_per_image'),
                    teacher_macs=teacher.get('macs'),
                    text_energy_mj=text.get('energy_mj_per_prompt'),
                    text_ann_energy_mj=text.get('ann_energy_mj_per_prompt'),
                    text_teacher_energy_mj=text.get('teacher_energy_mj_per_prompt'))
    if checkpoint and str(checkpoint).endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(str(checkpoint), framework='pt') as f:
            meta = f.metadata() or {}
        try:
            snn, ann = float(meta['energy_mj_per_image']), float(meta['ann_energy_mj_per_image'])
        except (KeyError, ValueError):
            return None
        return dict(source='checkpoint metadata', data=None, num_samples=None, T=meta.get('T'), energy_mj=snn,
                    ann_energy_mj=ann, teacher=None, teacher_energy_mj=None, teacher_macs=None,
                    text_energy_mj=None, text_ann_energy_mj=None, text_teacher_energy_mj=None)
    return None


def _checkpoint_model_name(path: str) -> Optional[str]:
    """The open_clip config a safetensors checkpoint names in its metadata (``spikeclip push`` writes it)."""
    if not path.endswith('.safetensors') or not os.path.isfile(path):
        return None
    from safetensors import safe_open
    try:
        with safe_open(path, framework='pt') as f:
            return (f.metadata() or {}).get('model_name')
    except Exception:  # an unreadable file: check_checkpoint_file names the problem
        return None


class ZeroShotApp:
    """One SpikeCLIP, loaded once, and ``classify(image, classnames, templates)`` over it.

    Args:
        model: ``local-dir:PATH`` (a folder ``spikeclip push`` wrote), ``hf-hub:ORG/NAME[@REVISION]`` (downloaded
            with ``open_clip_spike.hub.download_from_hub``: safetensors only), a checkpoint file whose metadata
            names its config, or a registered SpikeCLIP config (with ``pretrained``; without: random weights).
        pretrained: A checkpoint file of the config ``model``.
        device: Where the model runs.
        max_classes: Most class names one request may give (ImageNet's 1,000 by default).
        max_prompts: Most prompts (classes x templates) one class list may need encoding.
        max_name_chars: Longest class name or template accepted.
        cache_size: Class lists whose embeddings are kept.
        top_k: Classes in a result.

    Raises:
        ValueError: the model cannot be found or read, or is not a SpikeCLIP.
    """

    def __init__(self, model: str, pretrained: Optional[str] = None, *, device: Union[str, torch.device] = 'cpu',
                 max_classes: int = 1000, max_prompts: int = 20000, max_name_chars: int = 200,
                 cache_size: int = 8, top_k: int = 5):
        import open_clip
        from open_clip.factory import parse_model_name

        for name, value in (('max_classes', max_classes), ('max_prompts', max_prompts),
                            ('max_name_chars', max_name_chars), ('cache_size', cache_size), ('top_k', top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
        register_model_configs()
        model = os.fspath(model)
        schema, identifier = parse_model_name(model)
        folder = None
        if schema == 'hf-hub':
            from .hub import download_from_hub
            repo_id, _, revision = identifier.partition('@')
            folder = download_from_hub(repo_id, revision or None, timm_files=False)
            ref = f'local-dir:{folder}'
        elif schema == 'local-dir':
            folder = Path(identifier)
            if not (folder / 'open_clip_config.json').is_file():
                raise ValueError(f'{model}: no open_clip_config.json in {folder} (a folder written by spikeclip push '
                                 f'--local-dir, or spikeclip demo\'s hub/)')
            ref = model
        elif model.endswith(('.safetensors', '.pt', '.pth', '.bin')) or os.sep in model or os.path.isfile(model):
            check_checkpoint_file(model)
            config = _checkpoint_model_name(model)
            if config is None:
                raise ValueError(f'{model} does not name its model config in its metadata: give the config and '
                                 f'the file, e.g. --model SpikeCLIP-Tiny --pretrained {model}')
            if pretrained is not None:
                raise ValueError('Give the checkpoint once: as --model FILE or as --pretrained FILE')
            ref, pretrained = config, model
        else:
            if model not in open_clip.list_models():
                raise ValueError(f'Unknown model {model!r}: give local-dir:PATH, hf-hub:ORG/NAME, a checkpoint '
                                 f'file or a SpikeCLIP config')
            ref = model
        if pretrained is not None:
            check_checkpoint_file(pretrained)
        net, _, preprocess = open_clip.create_model_and_transforms(ref, pretrained=pretrained, device=device)
        if not isinstance(net, SpikeCLIP):
            raise ValueError(f'{model!r} is an open_clip model but not a SpikeCLIP (no spiking towers)')
        self.model = net.eval()
        # what classifies and is timed: the inference form (event-driven on the CPU), as spikeclip zeroshot runs;
        # the energy counts come from the model as trained (its neurons and layers, each its own module)
        self.fast = inference_form(self.model, device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(ref)
        self.model_ref = model
        # shown on the page: the config the weights were published as, and where they came from (no local path)
        weights = (folder / 'open_clip_model.safetensors') if folder is not None else None
        config_name = _checkpoint_model_name(str(weights)) if weights is not None else None
        self.name = config_name or (ref if schema is None else 'SpikeCLIP')
        self.source = identifier if schema == 'hf-hub' else Path(pretrained or model).name if (
            pretrained or schema == 'local-dir') else 'random weights'
        self.trained = pretrained is not None or folder is not None
        self.device = torch.device(device)
        self.published = _published_energy(folder, pretrained)
        size = open_clip.get_model_preprocess_cfg(net).get('size', 224)
        self.input_size = max(size) if isinstance(size, (list, tuple)) else int(size)
        self.constants = EnergyConstants()
        self.max_classes, self.max_prompts, self.max_name_chars = max_classes, max_prompts, max_name_chars
        self.cache_size, self.top_k = cache_size, top_k
        # the ANN of equal shape of each tower is built once: its MAC count does not depend on the input
        self._ann_image = ann_equivalent(self.model.visual).eval()
        self._ann_text = ann_equivalent(self.model.text).eval()
        self._cache: 'OrderedDict[Tuple, Tuple[torch.Tensor, Dict[str, Any]]]' = OrderedDict()
        # The neurons keep state within a forward: one classification at a time (several tabs queue here).
        self._lock = threading.Lock()
        # one forward at launch, so that the time shown for the first image is not that of a first call
        # (kernel compilation, allocator warm-up)
        size = self.model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        with torch.no_grad(), eval_mode(self.model):
            self.fast.encode_image(torch.zeros(1, 3, *size, device=self.device))

    @property
    def T(self) -> int:
        return int(self.model.T)

    def resolve(self, classnames: Union[str, Sequence[str]],
                templates: Union[None, str, Sequence[str]] = None) -> Tuple[List[str], List[str]]:
        """Class names and templates through ``zero_shot.resolve_classnames_templates``, within the page's limits.

        A typed list must not repeat a name (two identical classes split their probability); a shipped set may
        (ImageNet's repeats two), and its repeated names are told apart by their class index.
        """
        if isinstance(classnames, str) and not classnames.strip():
            raise ValueError('No class names given: type some (comma-separated) or choose a class-name set')
        names, temps = resolve_classnames_templates(classnames, templates)
        if len(names) > self.max_classes:
            raise ValueError(f'{len(names):,} class names: the page takes at most {self.max_classes:,} '
                             f'(spikeclip app --max-classes)')
        for what, items in (('class name', names), ('template', temps)):
            long = [i for i, s in enumerate(items) if len(s) > self.max_name_chars]
            if long:
                s = items[long[0]]
                raise ValueError(f'{what.capitalize()} {long[0] + 1} is {len(s):,} characters long ("{s[:30]}..."); '
                                 f'at most {self.max_name_chars} per {what}')
        shipped = isinstance(classnames, str) and classnames in CLASSNAMES
        seen, dupes = set(), []
        for n in names:
            if n in seen and n not in dupes:
                dupes.append(n)
            seen.add(n)
        if dupes and not shipped:
            raise ValueError(f'Repeated class names: {", ".join(repr(d) for d in dupes[:5])}; give each class once '
                             f'(identical classes share their probability)')
        if len(names) * len(temps) > self.max_prompts:
            raise ValueError(f'{len(names):,} classes x {len(temps)} templates = {len(names) * len(temps):,} prompts, '
                             f'more than the {self.max_prompts:,} the page encodes per class list; use fewer '
                             f'templates (e.g. one: a photo of a {{}}.)')
        return names, temps

    def _labels(self, names: List[str]) -> List[str]:
        counts: Dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return [f'{n} (class {i})' if counts[n] > 1 else n for i, n in enumerate(names)]

    def _classifier(self, names: List[str], temps: List[str]) -> Tuple[torch.Tensor, Dict[str, Any], float, bool]:
        key = (tuple(names), tuple(temps))
        if key in self._cache:
            self._cache.move_to_end(key)
            return (*self._cache[key], 0.0, True)
        start = time.perf_counter()
        classifier = build_classifier(self.fast, self.tokenizer, names, temps, device=self.device)
        seconds = time.perf_counter() - start
        prompts = [t.format(c) for c in names for t in temps][:TEXT_ENERGY_PROMPTS]
        tokens = self.tokenizer(prompts).to(self.device)
        report = energy_report(self.model.text, tokens, model_name='text tower', data_name='class prompts',
                               input_size=[tokens.shape[1]], sample='prompt', ann_model=self._ann_text,
                               constants=self.constants, progress=False, measure_time=False)
        text = dict(prompts=len(names) * len(temps), measured_prompts=len(prompts), macs=report.macs,
                    sops=report.sops, energy_mj=report.energy_mj, ann_macs=report.ann_macs,
                    ann_energy_mj=report.ann_energy_mj, mean_firing_rate=report.mean_firing_rate)
        self._cache[key] = (classifier, text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return classifier, text, seconds, False

    @torch.no_grad()
    def classify(self, image: Any, classnames: Union[str, Sequence[str]],
                 templates: Union[None, str, Sequence[str]] = None, top_k: Optional[int] = None) -> ZeroShotResult:
        """Classify one image among ``classnames`` and measure the image tower on it.

        Args:
            image: A PIL image, a uint8 array, the bytes of an image file or its path (see ``load_image``).
            classnames: A shipped set (``fashion_mnist``, ``cifar10``, ...), ``"cat, dog"``, or a list.
            templates: A template set, or a list of ``str.format`` templates; default: the set's, else
                'a photo of a {}.' (``zero_shot.resolve_classnames_templates``).
            top_k: Classes in the result (default: the app's).

        Raises:
            ValueError: a bad image, class list or template list (a one-line message).
        """
        img = load_image(image, self.input_size)
        names, temps = self.resolve(classnames, templates)
        k = min(top_k or self.top_k, len(names))
        x = self.preprocess(img).unsqueeze(0).to(self.device)
        with self._lock, eval_mode(self.model):
            classifier, text, text_seconds, cached = self._classifier(names, temps)
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            features = self.fast.encode_image(x)
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            # as zero_shot.evaluate: normalised image features against the class embeddings
            logits = F.normalize(features.float(), dim=-1) @ classifier.to(self.device)
            probs = (self.model.logit_scale.exp().float() * logits).softmax(dim=-1)[0].cpu()
            report = energy_report(self.model.visual, x, model_name='image tower', data_name='this image',
                                   ann_model=self._ann_image, constants=self.constants, progress=False,
                                   measure_time=False)
        labels = self._labels(names)
        top = probs.topk(k)
        return ZeroShotResult(
            label=labels[int(logits[0].argmax())],
            probabilities={labels[int(i)]: float(p) for p, i in zip(top.values, top.indices)},
            classnames=names, templates=temps, T=self.T,
            firing_rates={_short(n): float(r) for n, r in report.neurons.items()},
            mean_firing_rate=report.mean_firing_rate, macs=report.macs, sops=report.sops,
            energy_mj=report.energy_mj, ann_macs=report.ann_macs, ann_energy_mj=report.ann_energy_mj,
            text=text, published=self.published, seconds=seconds, text_seconds=text_seconds, cached=cached,
            device=str(self.device), constants=asdict(self.constants))


def _short(layer: str) -> str:
    """A neuron layer's name without open_clip's wrapper prefix (``trunk.``)."""
    return layer[len('trunk.'):] if layer.startswith('trunk.') else layer


# --------------------------------------------------------------------------------------------------------------
# The page (Gradio, imported only here)


def require_gradio():
    """The ``gradio`` module, or an ImportError naming the extra that installs it."""
    try:
        import gradio
    except ImportError as e:
        raise ImportError(f"The page needs gradio, which is not installed: {APP_EXTRA}") from e
    return gradio


def example_images() -> List[str]:
    """Example images for the page: Fashion-MNIST test images shipped with the package, and scikit-image's
    sample photos where scikit-image is installed."""
    files = sorted(str(p) for p in _EXAMPLES_DIR.glob('*.png'))
    try:
        import skimage
        data_dir = Path(skimage.__file__).parent / 'data'
        files += [str(data_dir / n) for n in _SKIMAGE_EXAMPLES if (data_dir / n).is_file()]
    except ImportError:
        pass
    return files


def _fmt(x: Optional[float]) -> str:
    return '-' if x is None else f'{x:.3g}'


def _ops(x: Optional[float]) -> str:
    """An operation count in millions or billions, as the energy literature writes them."""
    if x is None:
        return '-'
    return f'{x / 1e9:.3g} G' if x >= 1e9 else f'{x / 1e6:.3g} M' if x >= 1e4 else f'{x:.3g}'


def _ratio(energy: float, r: 'ZeroShotResult') -> str:
    return f'{energy / r.energy_mj:.1f}x' if r.energy_mj else '-'


def result_markdown(app: ZeroShotApp, r: ZeroShotResult) -> str:
    """The figures of one result as Markdown: prediction, time, the energy table, the text tower, the report."""
    p = r.published or {}
    top = r.probabilities[r.label]
    lines = [
        f'**Prediction: {r.label}** (p = {top:.3f}) among {len(r.classnames)} classes x {len(r.templates)} '
        f'template{"s" if len(r.templates) > 1 else ""}.',
        '',
        f'Image tower forward: **{r.seconds * 1000:.1f} ms** on {r.device} (T = {r.T}); class embeddings: '
        + ('from the cache.' if r.cached else f'computed in {r.text_seconds:.2f} s, kept for this class list.'),
        '',
        '| image tower, this image | MACs | SOPs | mJ | ratio |',
        '|---|---|---|---|---|',
        f'| {app.name}, spiking, T = {r.T} | {_ops(r.macs)} | {_ops(r.sops)} | {r.energy_mj:.3g} | 1 |',
        f'| the same network as an ANN | {_ops(r.ann_macs)} | 0 | {r.ann_energy_mj:.3g} | {_ratio(r.ann_energy_mj, r)} |',
    ]
    if p.get('teacher_energy_mj'):
        lines.append(f"| teacher {p.get('teacher') or ''} (ANN, published) | {_ops(p.get('teacher_macs'))} | 0 | "
                     f"{p['teacher_energy_mj']:.3g} | {_ratio(p['teacher_energy_mj'], r)} |")
    mfr = r.mean_firing_rate
    lines += ['', f'Mean firing rate {"-" if mfr is None else f"{mfr:.3f}"} over {len(r.firing_rates)} neuron layers '
              f'(spikes per neuron per time step). E = {r.constants.get("e_mac_pj")} pJ x MACs + '
              f'{r.constants.get("e_ac_pj")} pJ x SOPs.']
    t = r.text
    lines += ['', f"Text tower: {t['energy_mj']:.3g} mJ per prompt (ANN twin {t['ann_energy_mj']:.3g} mJ; counted on "
              f"{t['measured_prompts']} of the {t['prompts']} prompts, encoded once per class list)."]
    if p:
        where = f" on {p['data']}" if p.get('data') else ''
        teacher = (f", teacher {p.get('teacher') or ''} {p['teacher_energy_mj']:.3g} mJ"
                   if p.get('teacher_energy_mj') else '')
        lines += ['', f"Published report ({p['source']}{where}): {p['energy_mj']:.3g} mJ per image, ANN twin "
                  f"{_fmt(p.get('ann_energy_mj'))} mJ{teacher}."]
    elif not app.trained:
        lines += ['', 'Random weights (no checkpoint): the figures describe an untrained network.']
    return '\n'.join(lines)


def _check_uploads(image, input_size: int):
    """Have ``image`` (a ``gr.Image``) read its uploads with ``load_image``: a bad file is a message on the page, not
    a traceback, and PIL's size limit is checked before the pixels are decoded.

    The method is replaced on the instance: a subclass of a Gradio component would make Gradio write a ``.pyi``
    stub beside this module.
    """
    import gradio as gr

    def preprocess(payload):
        if payload is None:
            return None
        try:
            if payload.url and payload.url.startswith('data:'):
                source = base64.b64decode(payload.url.split(',', 1)[-1])
            elif payload.path:
                source = payload.path
            else:
                raise ValueError('The upload carried no image')
            return load_image(source, input_size)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    image.preprocess = preprocess
    return image


def build_demo(app: Union[ZeroShotApp, str], *, classnames: Optional[str] = None, examples: bool = True,
               **app_kwargs: Any):
    """The Gradio page over ``app`` (a ``ZeroShotApp``, or a model name to build one with ``app_kwargs``).

    Args:
        app: The loaded model, or what ``ZeroShotApp`` takes.
        classnames: A shipped class-name set chosen when the page opens (default: typed names).
        examples: Offer the example images.

    Returns:
        A ``gradio.Blocks``; ``.launch()`` it (``launch`` below binds 127.0.0.1 by default). Requests are served one
        at a time (a queue), uploads live in Gradio's temporary cache and are deleted after ten minutes.
    """
    gr = require_gradio()
    import pandas as pd

    if not isinstance(app, ZeroShotApp):
        app = ZeroShotApp(app, **app_kwargs)
    if classnames is not None and classnames not in CLASSNAME_SETS:
        raise ValueError(f'Unknown class-name set {classnames!r}; choose one of {", ".join(CLASSNAME_SETS)}')
    sets = [('typed below', '')] + [(f'{k} ({len(CLASSNAMES[k])} classes)', k) for k in CLASSNAME_SETS]

    def run(image, class_set, typed, typed_templates):
        if image is None:
            raise gr.Error('Give an image first: upload, paste, take one with the webcam, or pick an example',
                           print_exception=False)
        if class_set and class_set not in CLASSNAME_SETS:
            raise gr.Error(f'Unknown class-name set {class_set!r}', print_exception=False)
        try:
            names = class_set if class_set else parse_names(typed)
            if not names:
                raise ValueError('No class names given: type some (comma-separated) or choose a class-name set')
            temps = parse_templates(typed_templates) or None
            r = app.classify(image, names, temps)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # the page keeps serving; the log has the traceback
            _logger.exception('classification failed')
            raise gr.Error(f'Classification failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}',
                           print_exception=False) from None
        rates = pd.DataFrame({'layer': [f'{i:02d} {n}' for i, n in enumerate(r.firing_rates)],
                              'firing rate': list(r.firing_rates.values())})
        return r.probabilities, rates, result_markdown(app, r)

    def show_set(class_set):
        if not class_set:
            return gr.update(interactive=True)
        return gr.update(value=', '.join(CLASSNAMES[class_set]), interactive=False)

    header = (f'# Zero-shot classification with {app.name} ({app.source})\n'
              f'A spiking CLIP (SpikeCLIP, T = {app.T}): both encoders are spiking neural networks. Give an image '
              f'and class names; the page shows the most likely classes and, for this image, how many neurons '
              f'fired, the operations and the estimated energy beside the same network as an ANN.')
    with gr.Blocks(title=f'{app.name}: zero-shot', analytics_enabled=False, delete_cache=(600, 600)) as demo:
        gr.Markdown(header)
        with gr.Row():
            with gr.Column():
                image = _check_uploads(gr.Image(label='Image', type='pil', sources=['upload', 'clipboard', 'webcam'],
                                                elem_id='image', height=280), app.input_size)
                if examples and example_images():
                    gr.Examples(example_images(), inputs=image, label='Examples')
                class_set = gr.Dropdown(sets, value=classnames or '', label='Class-name set', elem_id='class-set')
                names = gr.Textbox(label='Class names (comma-separated)', placeholder='cat, dog, airplane',
                                   lines=2, elem_id='classnames',
                                   value=', '.join(CLASSNAMES[classnames]) if classnames else '',
                                   interactive=not classnames)
                templates = gr.Textbox(label='Templates (one a line, {} for the class name)', lines=2, value='',
                                       placeholder="default: the set's templates, else: a photo of a {}.",
                                       elem_id='templates')
                button = gr.Button('Classify', variant='primary', elem_id='classify')
            with gr.Column():
                label = gr.Label(num_top_classes=app.top_k, label=f'Top-{app.top_k}', elem_id='label')
                stats = gr.Markdown(label='Figures', elem_id='stats')
                rates = gr.BarPlot(x='layer', y='firing rate', label='Firing rate per layer (image tower, this image)',
                                   x_label_angle=-45, height=300, elem_id='rates', y_lim=[0, None])
        class_set.change(show_set, class_set, names, queue=False, api_name=False)
        inputs, outputs = [image, class_set, names, templates], [label, rates, stats]
        button.click(run, inputs, outputs, concurrency_limit=1, api_name='classify')
        names.submit(run, inputs, outputs, concurrency_limit=1, api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.spikeclip_app = app
    return demo


def launch(app: Union[ZeroShotApp, str], *, host: str = '127.0.0.1', port: int = 7860,
           classnames: Optional[str] = None, block: bool = True, quiet: bool = True, **app_kwargs: Any):
    """Build the page and serve it on ``host:port`` (this machine only by default).

    Args:
        app: A ``ZeroShotApp`` or a model name (``local-dir:``, ``hf-hub:``, checkpoint file).
        host: Address to bind: '127.0.0.1' serves this machine only; '0.0.0.0' every network it is on.
        port: TCP port.
        classnames: A class-name set chosen when the page opens.
        block: Serve until interrupted; False returns at once (close with ``demo.close()``).
        quiet: Leave out Gradio's own start-up lines.

    Returns:
        ``(demo, url)``.
    """
    demo = build_demo(app, classnames=classnames, **app_kwargs)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                            show_error=False, share=False, max_file_size=MAX_UPLOAD, ssr_mode=False)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
