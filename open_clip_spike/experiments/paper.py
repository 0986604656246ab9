"""Data preparation, model selection and the extra zero-shot evaluations of the paper's recipes (recipes/paper/).

``spikeclip paper <step>`` (also ``python -m open_clip_spike.cli.paper``):

- ``imagenet-csv``: stage 1 on ImageNet-1k: an open_clip_train CSV pairing every training image with one prompt
  of its class (class name x CLIP's 80 ImageNet templates, assigned round-robin from a seeded shuffle, so the
  text tower sees the whole 80,000-sentence corpus and the image tower every image). The reference code trains
  the towers apart on the same data; one loop with `AlignmentLoss` on both feature sets is equivalent and lets
  open_clip_train drive it.
- ``prepare``: stage 2 data of one downstream dataset: the official TRAIN split (Caltech101: the seeded 80/20
  split of `build_dataset`), of which a seeded, stratified ``val_fraction`` becomes a validation ImageFolder for
  model selection; the rest becomes ``train.csv`` (captions = the dataset's prompts filled with the class name,
  which is how ``spikeclip train --spike-loss dual`` finds labels). The test split is never touched here.
- ``finetune-teacher``: the stage 2 teacher, open_clip_train's CLIP training with the text tower locked.
- ``select``: the epoch with the best validation top-1 in open_clip_train's log (among the epochs
  that have a checkpoint), copied to ``best.safetensors``.
- ``relabel``: the paper's "replace label" (e.g. horse -> zebra, ship -> boat) and "expand label" (10 classes
  plus 10 CIFAR-100 distractors) zero-shot evaluations.
- ``table``: a Markdown results table from ``spikeclip zeroshot`` / ``relabel`` JSON files.

Every file is written to a temporary name and renamed, so an interrupted step leaves nothing half-written.
"""
import csv
import json
import logging
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from timm_spike.utils import atomic_path, atomic_write

from ..data import CLASSNAMES, TEMPLATES, build_dataset, dataset_classnames, get_classnames, get_templates

__all__ = ['DEFAULT_REPLACEMENTS', 'DEFAULT_DISTRACTORS', 'PaperError', 'imagenet_captions_csv', 'prepare_stage2',
           'select_best_epoch', 'relabel_eval', 'results_table', 'finetune_teacher']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# "Replace label": the paper's examples. Images keep their labels; only the prompt's name changes.
DEFAULT_REPLACEMENTS = {'horse': 'zebra', 'ship': 'boat'}
# "Expand label": 10 CIFAR-100 classes that overlap no CIFAR-10 / STL-10 class (this project's choice; the
# paper does not list its distractors). Override with --distractors.
DEFAULT_DISTRACTORS = ('apple', 'bicycle', 'bridge', 'castle', 'chair', 'cloud', 'lamp', 'mushroom', 'rose',
                       'television')


class PaperError(ValueError):
    """Bad input to a paper-recipe step; the message says what is wrong and what to do."""


def _atomic_dir(final: Path) -> Path:
    tmp = final.parent / f'.{final.name}.tmp'
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_text(path: PathLike, text: str) -> None:
    atomic_write(str(path), text.encode('utf-8'))


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    import io
    buf = io.StringIO()
    w = csv.writer(buf, delimiter='\t', lineterminator='\n', quoting=csv.QUOTE_MINIMAL)
    w.writerow(['filepath', 'title'])
    w.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: ImageNet images with the class-name x template corpus

def imagenet_captions_csv(
        train_dir: PathLike,
        output: PathLike,
        classnames: Union[str, Sequence[str]] = 'imagenet',
        templates: Union[str, Sequence[str]] = 'imagenet',
        seed: int = 0,
) -> Dict[str, int]:
    """Write an open_clip_train CSV (``filepath``, ``title``; tab-separated) for stage 1 on an ImageFolder.

    Class folders are taken in sorted order (ImageNet's synset ids ``n01440764`` ... sorted = CLIP's class
    order), so folder i gets class name i. Within each class the images, shuffled with ``seed``, take the
    templates in turn: with >= len(templates) images per class every sentence of the corpus is used.

    Args:
        train_dir: ImageFolder (e.g. ``ILSVRC2012/train``: one folder per synset).
        output: The CSV to write.
        classnames: One name per class folder, in sorted-folder order (a built-in set or a file).
        templates: Prompt templates with ``{}`` (default: CLIP's 80 ImageNet templates).
        seed: Seed of the image-to-template assignment.

    Returns:
        dict(images, classes, sentences): rows written, classes, distinct captions.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS
    root = Path(train_dir)
    if not root.is_dir():
        raise PaperError(f'{root} is not a folder: pass the ImageNet train ImageFolder (one folder per class)')
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    names = get_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) else list(classnames)
    temps = get_templates(templates) if isinstance(templates, (str, os.PathLike)) else list(templates)
    if len(folders) != len(names):
        raise PaperError(f'{root} has {len(folders)} class folders but {len(names)} class names were given; pass '
                         f'--classnames with one name per folder, in sorted folder order')
    rng = random.Random(seed)
    rows, sentences = [], set()
    for folder, name in zip(folders, names):
        files = sorted(str(p.resolve()) for p in (root / folder).rglob('*')
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise PaperError(f'class folder {root / folder} holds no images')
        rng.shuffle(files)
        offset = rng.randrange(len(temps))
        for i, path in enumerate(files):
            caption = temps[(offset + i) % len(temps)].format(name)
            sentences.add(caption)
            rows.append((path, caption))
    write_text(output, _csv_text(rows))
    _logger.info('wrote %s: %d images, %d classes, %d distinct captions', output, len(rows), len(names),
                 len(sentences))
    return dict(images=len(rows), classes=len(names), sentences=len(sentences))


# ---------------------------------------------------------------------------------------------------------------
# Stage 2 data

def _stratified_val(labels: Sequence[int], val_fraction: float, seed: int) -> List[int]:
    """Indices of a seeded validation split: round(val_fraction * n_c) images of each class, at least one for
    every class with two or more images, never the class's last image (so train keeps every class)."""
    by_class: Dict[int, List[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    rng = random.Random(seed)
    val = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.extend(idx[:k])
    return sorted(val)


def _labels_of(data) -> List[int]:
    for attr in ('targets', 'labels', '_labels', 'y'):  # torchvision readers keep labels without decoding images
        v = getattr(data, attr, None)
        if v is not None and len(v) == len(data):
            return [int(t) for t in v]
    if isinstance(data, torch.utils.data.Subset):
        inner = _labels_of(data.dataset)
        return [inner[i] for i in data.indices]
    return [int(data[i][1]) for i in range(len(data))]


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-.' else '_' for c in name)[:60]


def prepare_stage2(
        dataset: PathLike,
        output: PathLike,
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Optional[Union[str, Sequence[str]]] = None,
        data_root: Optional[PathLike] = None,
        download: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
) -> Dict[str, Any]:
    """Write the stage 2 data of one dataset: ``train.csv``, ``val/`` (ImageFolder), class names and templates.

    Reads only the dataset's train split. Validation images are a seeded, stratified ``val_fraction`` of it;
    the rest is the training set. ``val/`` holds one folder per class named ``NNN_name`` (sorted = label order),
    which ``spikeclip train --imagenet-val`` evaluates with the run's class names each epoch.

    Args:
        dataset: A torchvision name (cifar10, cifar100, stl10, flowers102, oxford_pets, caltech101, fashion_mnist)
            or an IDX / ImageFolder folder (see `build_dataset`).
        output: Folder to write (created; refused if it already holds a prepared set).
        classnames: Class names in label order (default: the dataset's built-in set).
        templates: Prompts for the captions (default: the class-name set's, else ``a photo of a {}.``).
        data_root: Where torchvision datasets live.
        download: Let torchvision download the dataset.
        val_fraction: Fraction of each class's training images held out for model selection.
        seed: Seed of the validation split and of the caption templates (Caltech101's 80/20 split uses it too).

    Returns:
        dict(train, val, classes, seed, val_fraction, dataset) (also written as ``split.json``).
    """
    if not 0 < val_fraction < 1:
        raise PaperError(f'val_fraction must lie in (0, 1), got {val_fraction}')
    out = Path(output)
    if (out / 'split.json').exists():
        raise PaperError(f'{out} already holds a prepared dataset (split.json); delete it or pick another folder')
    key = os.fspath(dataset)
    data = build_dataset(key, 'train', None, data_root, download, seed=seed)
    if classnames is None:
        names = dataset_classnames(key, data)
        if names is None:
            raise PaperError(f'no class names known for {key!r}: pass --classnames (a built-in set or a file)')
    else:
        names = get_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) else list(classnames)
    if templates is None:
        tkey = classnames if isinstance(classnames, str) and classnames in TEMPLATES else key
        templates = tkey if tkey in TEMPLATES else 'simple'
    temps = get_templates(templates) if isinstance(templates, (str, os.PathLike)) else list(templates)
    labels = _labels_of(data)
    if labels and (min(labels) < 0 or max(labels) >= len(names)):
        raise PaperError(f'{key}: label {max(labels)} but only {len(names)} class names; the names do not match')
    counts = np.bincount(labels, minlength=len(names))
    few = [names[i] for i in np.flatnonzero(counts < 2)]
    if few:
        # validation needs one image of every class (its folders are matched to the class names by position)
        raise PaperError(f'{key}: {len(few)} class(es) with fewer than 2 training images, e.g. {few[:3]}; the '
                         f'validation split needs one of each and training at least one')
    val_idx = set(_stratified_val(labels, val_fraction, seed))

    out.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_dir(out / 'images')
    val_tmp = _atomic_dir(out / 'val')
    rng = random.Random(seed)
    rows = []
    for i in tqdm(range(len(data)), desc=f'prepare {Path(key).name}', unit='img'):
        image, y = data[i]
        image = image.convert('RGB')
        if i in val_idx:
            folder = val_tmp / f'{y:03d}_{_safe(names[y])}'
            folder.mkdir(exist_ok=True)
            image.save(folder / f'{i:06d}.png')
        else:
            image.save(tmp / f'{i:06d}.png')
            rows.append((str((out / 'images' / f'{i:06d}.png').resolve()), rng.choice(temps).format(names[y])))
    for final, staged in ((out / 'images', tmp), (out / 'val', val_tmp)):
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    write_text(out / 'train.csv', _csv_text(rows))
    write_text(out / 'classnames.txt', ''.join(n + '\n' for n in names))
    write_text(out / 'templates.txt', ''.join(t + '\n' for t in temps))
    info = dict(dataset=key, train=len(rows), val=len(val_idx), classes=len(names), seed=seed,
                val_fraction=val_fraction)
    write_text(out / 'split.json', json.dumps(dict(info, val_indices=sorted(val_idx)), indent=1) + '\n')
    _logger.info('prepared %s in %s: %d train, %d val images, %d classes', key, out, len(rows), len(val_idx),
                 len(names))
    return info


# ---------------------------------------------------------------------------------------------------------------
# Stage 2 teacher: CLIP fine-tuned on the task, image tower only

def finetune_teacher(argv: Sequence[str]) -> int:
    """Run open_clip_train's unmodified CLIP training with the text tower frozen (``--lock-text`` added), then
    write each ``epoch_N.pt`` as ``epoch_N.safetensors`` (what ``--distill-pretrained`` then loads).

    The paper fine-tunes its teacher on each downstream task for 20 epochs, image tower only; here the loss is
    open_clip's contrastive loss on the task's captions (class prompts), as open_clip_train trains. The SpikeCLIP
    model configs are registered first, and ``$SPIKECLIP_LOGS`` stands in for ``--logs`` (torchrun takes
    ``--logs`` for its own option).

    Args:
        argv: open_clip_train arguments (``--name`` required, so the checkpoints can be found).

    Returns:
        Exit code: 0 on success.
    """
    import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs, e.g. the tiny test teacher)
    from open_clip_train.main import main as oc_main
    from open_clip_train.params import parse_args
    from ..checkpoint import export_checkpoint
    from ..train import LOGS_ENV
    rest = list(argv)
    if '--lock-text' not in rest:
        rest.append('--lock-text')
    if '--lock-text-freeze-layer-norm' not in rest:
        # open_clip 3.3's CLIP.lock_text_tower asserts freeze_layer_norm (unfreezing LayerNorm is unsupported)
        rest.append('--lock-text-freeze-layer-norm')
    logs = os.environ.get(LOGS_ENV)
    if logs and not any(r == '--logs' or r.startswith('--logs=') for r in rest):
        rest += ['--logs', logs]
    args = parse_args(rest)
    if not args.name:
        raise PaperError('finetune-teacher needs --name (the run folder the recipe reads the checkpoint from)')
    if args.train_data is None:
        raise PaperError('finetune-teacher needs --train-data (the train.csv written by `spikeclip paper prepare`)')
    run = Path(args.logs) / args.name
    if (run / 'out.log').exists() and args.resume != 'latest':
        raise PaperError(f'{run} exists: continue it with --resume latest, or pick a new --name')
    from ..train.patches import quiet_torch_logs
    with quiet_torch_logs():  # torch's compiler loggers stay at torch's levels, not open_clip_train's INFO
        rc = oc_main(rest)
    if rc not in (None, 0):
        return 1
    if os.environ.get('RANK', '0') == '0':
        for pt in sorted((run / 'checkpoints').glob('epoch_*.pt')):
            out = pt.with_suffix('.safetensors')
            if not out.exists() or out.stat().st_mtime < pt.stat().st_mtime:
                export_checkpoint(str(pt), str(out))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Model selection

def select_best_epoch(run_dir: PathLike, metric: str = 'zeroshot-val-top1',
                      output: Optional[PathLike] = None) -> Dict[str, Any]:
    """The epoch of an open_clip_train run with the best validation ``metric``, among epochs with a checkpoint.

    Args:
        run_dir: The run folder (``LOGS/NAME``) holding ``out.log`` and ``checkpoints/epoch_N.safetensors``.
        metric: Evaluation key to maximise (``spikeclip train`` writes ``zeroshot-val-top1`` when given
            ``--imagenet-val``).
        output: Copy the chosen weights here (default ``checkpoints/best.safetensors``).

    Returns:
        dict(epoch, metric, value, checkpoint, candidates).
    """
    import re
    ckpt = Path(run_dir) / 'checkpoints'
    log = Path(run_dir) / 'out.log'
    if not log.exists():
        raise PaperError(f'{log} not found: pass the run folder (LOGS/NAME) of a finished spikeclip train run')
    # open_clip_train logs "Eval Epoch: N <key>: <value>\t..." after each evaluated epoch (results.jsonl has no
    # epoch for zero-shot-only evaluations, and skips epochs with nothing to evaluate).
    evals = {int(m.group(1)): m.group(2) for m in re.finditer(r'Eval Epoch: (\d+) (.*)', log.read_text())}
    if not any(re.search(rf'(^|\t){re.escape(metric)}: ', v) for v in evals.values()):
        raise PaperError(f'{log} has no {metric!r} evaluation: run stage 2 with --imagenet-val VAL_FOLDER and '
                         f'--zeroshot-frequency dividing --save-frequency')
    scores = {}
    for epoch, text in evals.items():
        m = re.search(rf'(?:^|\t){re.escape(metric)}: ([0-9.eE+-]+)', text)
        if m and (ckpt / f'epoch_{epoch}.safetensors').exists():
            scores[epoch] = float(m.group(1))
    if not scores:
        raise PaperError(f'no evaluated epoch in {log} has an epoch_N.safetensors checkpoint in {ckpt}')
    best = max(scores, key=lambda e: (scores[e], e))
    src = ckpt / f'epoch_{best}.safetensors'
    dst = Path(output) if output else ckpt / 'best.safetensors'
    with atomic_path(str(dst)) as tmp:
        shutil.copyfile(src, tmp)
    return dict(epoch=best, metric=metric, value=scores[best], checkpoint=str(dst), candidates=scores)


# ---------------------------------------------------------------------------------------------------------------
# Replace label / expand label

def relabel_eval(
        model_name: str,
        pretrained: Optional[str],
        dataset: PathLike,
        mode: str,
        classnames: Optional[Union[str, Sequence[str]]] = None,
        templates: Union[str, Sequence[str]] = 'simple',
        replacements: Optional[Dict[str, str]] = None,
        distractors: Sequence[str] = DEFAULT_DISTRACTORS,
        data_root: Optional[PathLike] = None,
        download: bool = False,
        batch_size: int = 64,
        limit: Optional[int] = None,
        device: str = 'cpu',
) -> Dict[str, Any]:
    """Zero-shot with changed label sets, on a test split (images keep their labels).

    ``replace``: the names in ``replacements`` are swapped (horse -> zebra, ship -> boat); reports top-1 over all
    images and over the images of the replaced classes (does the model still pick "zebra" for horses?).
    ``expand``: ``distractors`` are added as extra classes; reports top-1 over all classes and the fraction of
    images assigned to a distractor.

    Args:
        model_name: open_clip model name, ``hf-hub:`` or ``local-dir:``.
        pretrained: Checkpoint file or tag.
        dataset: cifar10, stl10 (or another torchvision name / folder); its test split is used.
        mode: 'replace' or 'expand'.
        classnames: Original class names (default: the dataset's).
        templates: Prompt templates (default: 'a photo of a {}.', the same for original and new names).
        replacements: old name -> new name (default `DEFAULT_REPLACEMENTS`).
        distractors: Extra class names for 'expand'.
        data_root, download: As for `build_dataset`.
        batch_size: Images per batch.
        limit: Evaluate only the first N images.
        device: Device.
    """
    import open_clip
    from ..factory import register_model_configs
    from ..zero_shot import build_classifier, eval_mode
    if mode not in ('replace', 'expand'):
        raise PaperError(f"mode must be 'replace' or 'expand', got {mode!r}")
    key = os.fspath(dataset)

    def label_set(base: List[str]) -> List[str]:
        if mode == 'replace':
            unknown = sorted(set(replacements) - set(base))
            if unknown:
                raise PaperError(f'cannot replace {unknown}: not class names of {key} ({base})')
            return [replacements.get(n, n) for n in base]
        clash = sorted(set(distractors) & set(base))
        if clash or not distractors:
            raise PaperError(f'distractors must be new class names; {clash or "none given"}')
        return list(base) + list(distractors)

    replacements = dict(DEFAULT_REPLACEMENTS if replacements is None else replacements)
    if classnames is not None:
        base = get_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) else list(classnames)
    else:
        base = list(CLASSNAMES[key]) if key in CLASSNAMES else None
    if base is not None:
        label_set(base)  # bad label sets are refused before any model or data is loaded
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    data = build_dataset(key, 'test', preprocess, data_root, download)
    if base is None:
        base = dataset_classnames(key, data)
        if base is None:
            raise PaperError(f'no class names known for {key!r}: pass --classnames')
    names = label_set(base)
    focus = [i for i, n in enumerate(base) if n in replacements] if mode == 'replace' else []
    if limit is not None:
        data = torch.utils.data.Subset(data, range(min(int(limit), len(data))))
    classifier = build_classifier(model, tokenizer, names, templates, device=device)
    preds, targets = [], []
    with eval_mode(model), torch.no_grad():
        for images, y in tqdm(DataLoader(data, batch_size=batch_size), desc=f'{mode} label', unit='batch'):
            feats = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)
            preds.append((feats @ classifier.float()).argmax(1).cpu())
            targets.append(torch.as_tensor(y))
    pred, target = torch.cat(preds), torch.cat(targets)
    if len(target) == 0:
        raise PaperError(f'{key}: the test split is empty')
    if int(target.max()) >= len(base):
        raise PaperError(f'{key}: label {int(target.max())} but {len(base)} class names; the names do not match')
    hit = pred == target
    result = dict(mode=mode, model=model_name, pretrained=pretrained, dataset=key, classnames=names, n=len(target),
                  top1=int(hit.sum()) / len(target))
    if mode == 'replace':
        sel = torch.isin(target, torch.tensor(focus))
        result['replacements'] = replacements
        result['n_replaced'] = int(sel.sum())
        result['top1_replaced'] = int(hit[sel].sum()) / int(sel.sum()) if sel.any() else None
    else:
        result['distractors'] = list(distractors)
        result['to_distractor'] = int((pred >= len(base)).sum()) / len(target)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Results table

def results_table(paths: Sequence[PathLike]) -> str:
    """A Markdown table, one row per JSON file of ``spikeclip zeroshot`` or ``spikeclip paper relabel``."""
    def pct(v: Any) -> str:
        return '' if v is None else f'{100 * v:.2f}'

    rows = ['| evaluation | dataset | model | checkpoint | top-1 | top-5 | top-1 on replaced classes | '
            'to distractors | images |', '|---|---|---|---|---|---|---|---|---|']
    for p in paths:
        r = json.loads(Path(p).read_text())
        if not isinstance(r, dict) or 'top1' not in r or 'n' not in r:
            raise PaperError(f'{p} is not a zeroshot or relabel result (no top1 / n)')
        ckpt = Path(str(r.get('pretrained') or '')).parent.parent.name or str(r.get('pretrained'))
        rows.append(f"| {r.get('mode', 'zero-shot')} | {Path(str(r.get('dataset', ''))).name} | {r.get('model', '')} | "
                    f"{ckpt} | {pct(r['top1'])} | {pct(r.get('top5'))} | {pct(r.get('top1_replaced'))} | "
                    f"{pct(r.get('to_distractor'))} | {r['n']} |")
    return '\n'.join(rows) + '\n'


# ---------------------------------------------------------------------------------------------------------------
# CLI
