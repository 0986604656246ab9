"""The parameters of ``spikeclip train``: the ``--spike-*`` options (everything else is open_clip_train's, parsed by
``open_clip_train.params``), their checks, and the class names and templates they name.

Counterpart of ``open_clip_train.params``; the run is ``main.py``, the hooks on the models ``hooks.py``.
"""
import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import open_clip
from open_clip.factory import parse_model_name

from open_clip_spike.loss import RATE_MODES
from open_clip_spike.torchscript import check_torchscript
from open_clip_spike.zero_shot import resolve_classnames_templates as resolve_zero_shot_names

from .data import DataCheckError, check_csv

__all__ = ['LOGS_ENV', 'SpikeTrainConfig', 'SpikeTrainError', 'resolve_classnames_templates', 'spike_parser',
           'validate']

LOGS_ENV = 'SPIKECLIP_LOGS'  # torchrun's parser takes --logs for its own --logs-specs, so offer this instead


class SpikeTrainError(ValueError):
    """Bad input to ``spikeclip train``; the message says what is wrong and what to do."""


@dataclass
class SpikeTrainConfig:
    """The ``--spike-*`` options (everything else is open_clip_train's)."""
    loss: str = 'align'
    image_weight: float = 1.0
    text_weight: float = 1.0
    contrastive_weight: float = 0.0
    kl_weight: float = 1.0
    kl_temperature: float = 1.0
    classnames: Optional[str] = None
    templates: Optional[str] = None
    logs: Optional[str] = None
    model_configs: Tuple[str, ...] = ()
    export_safetensors: bool = True
    rate_weight: float = 0.0
    rate_target: float = 0.0
    rate_mode: str = 'squared'
    teacher_cache: Optional[str] = None
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    max_bad_images: int = 100


def spike_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='spikeclip train', add_help=False, allow_abbrev=False,
        description='Train SpikeCLIP with open_clip_train; all other options are open_clip_train\'s (listed below).')
    g = p.add_argument_group('SpikeCLIP options')
    g.add_argument('--spike-loss', dest='loss', choices=('align', 'dual'), default='align',
                   help='align: stage 1, distil both towers to the teacher; dual: stage 2, CE + KL with the text '
                        'tower frozen (default: align)')
    g.add_argument('--spike-image-weight', dest='image_weight', type=float, default=1.0,
                   help='stage 1: weight of mean(1 - cos) on image features (default 1)')
    g.add_argument('--spike-text-weight', dest='text_weight', type=float, default=1.0,
                   help='stage 1: weight of mean(1 - cos) on text features (default 1)')
    g.add_argument('--spike-contrastive-weight', dest='contrastive_weight', type=float, default=0.0,
                   help='stage 1: weight of an extra CLIP contrastive loss on the student (default 0: off)')
    g.add_argument('--kl-weight', dest='kl_weight', type=float, default=1.0,
                   help='stage 2: lambda, weight of KL(teacher || student) (default 1)')
    g.add_argument('--kl-temperature', dest='kl_temperature', type=float, default=1.0,
                   help='stage 2: tau, temperature of the KL term (default 1)')
    g.add_argument('--spike-classnames', dest='classnames', default=None,
                   help='stage 2 and zero-shot: a built-in class-name set (e.g. cifar10, fashion_mnist) or a '
                        'text file with one class name per line')
    g.add_argument('--spike-templates', dest='templates', default=None,
                   help='prompt templates with {} for the class name: a built-in set or a file, one per line '
                        '(default: the set named like --spike-classnames, else "a photo of a {}.")')
    g.add_argument('--spike-logs', dest='logs', default=None,
                   help=f'where runs are written (open_clip_train\'s --logs, which torchrun cannot pass on); '
                        f'also ${LOGS_ENV}')
    g.add_argument('--spike-model-config', dest='model_configs', action='append', default=[],
                   help='an extra open_clip model config JSON file or folder to register (repeatable)')
    g.add_argument('--spike-rate-weight', dest='rate_weight', type=float, default=0.0,
                   help='both stages: weight of the firing-rate regulariser rate_loss, W x mean over the '
                        'student\'s neuron layers of (rate - target)^2 (default 0: off)')
    g.add_argument('--spike-rate-target', dest='rate_target', type=float, default=0.0,
                   help='target firing rate of the regulariser, spikes per neuron per step in [0, 1] (default 0)')
    g.add_argument('--spike-rate-mode', dest='rate_mode', choices=RATE_MODES, default='squared',
                   help='squared: pull every layer\'s rate to the target; hinge: penalise only rates above it')
    g.add_argument('--spike-teacher-cache', dest='teacher_cache', default=None, metavar='DIR',
                   help='keep the teacher\'s features per sample in DIR (safetensors shards): the first epoch '
                        'computes them, later epochs and runs skip the teacher. Training images then get the '
                        'validation preprocessing (no augmentation), which the per-sample keys need; a cache made '
                        'for another teacher, preprocessing or precision is refused')
    g.add_argument('--no-export-safetensors', dest='export_safetensors', action='store_false',
                   help='do not write epoch_N.safetensors next to open_clip_train\'s epoch_N.pt')
    g.add_argument('--spike-save-every-steps', dest='save_every_steps', type=int, default=0, metavar='N',
                   help='also write a mid-epoch checkpoint (checkpoints/step_latest.pt) every N optimizer steps; '
                        'a rerun of the same command resumes from it exactly (default 0: off)')
    g.add_argument('--spike-save-every-minutes', dest='save_every_minutes', type=float, default=0.0, metavar='M',
                   help='also write the mid-epoch checkpoint every M minutes (default 0: off). SIGTERM and SIGUSR1 '
                        'always write it at the next step and stop the run with exit code 75')
    g.add_argument('--spike-max-bad-images', dest='max_bad_images', type=int, default=100, metavar='N',
                   help='a CSV image that cannot be read is skipped with a warning; more than N in a run stop it '
                        '(default 100)')
    return p


def resolve_classnames_templates(
        classnames: Optional[str], templates: Optional[str]) -> Tuple[Optional[List[str]], List[str]]:
    """Class names and templates of ``--spike-classnames`` / ``--spike-templates``, by the rule every command
    follows (``open_clip_spike.zero_shot.resolve_classnames_templates``); no class names in stage 1."""
    try:
        if classnames:
            return resolve_zero_shot_names(classnames, templates)
        return None, resolve_zero_shot_names(['class'], templates)[1]
    except (ValueError, OSError) as e:
        raise SpikeTrainError(f'--spike-classnames / --spike-templates: {e}') from e


def student_text_used(cfg: SpikeTrainConfig) -> bool:
    """Whether the student's text features enter the loss (stage 1 with a text or a contrastive term)."""
    return cfg.loss == 'align' and (cfg.text_weight > 0 or cfg.contrastive_weight > 0)


def student_image_used(cfg: SpikeTrainConfig) -> bool:
    """Whether the student's image features enter the loss."""
    return cfg.loss == 'dual' or cfg.image_weight > 0 or cfg.contrastive_weight > 0


# ---------------------------------------------------------------------------------------------------------------
# Checks before any model is built

def _known_model(name: str) -> bool:
    return parse_model_name(name)[0] is not None or name in open_clip.list_models()


def validate(cfg: SpikeTrainConfig, a: argparse.Namespace) -> None:
    models = [m for m in open_clip.list_models() if m.startswith('SpikeCLIP')]
    if not _known_model(a.model):
        raise SpikeTrainError(f'unknown model {a.model!r}; SpikeCLIP models: {models} (any open_clip model name, '
                              f'hf-hub:ORG/NAME or local-dir:PATH works; --spike-model-config adds a config)')
    # open_clip_train catches a scripting error and trains unscripted without a word: say why, and refuse
    if a.torchscript and (reason := check_torchscript(a.model)) is not None:
        raise SpikeTrainError(f'--torchscript: {reason}; drop --torchscript (torch.compile is --torchcompile)')
    if (a.distill_model is None) != (a.distill_pretrained is None) or a.distill_model is None:
        raise SpikeTrainError(
            'SpikeCLIP training distils from a teacher: give both --distill-model (an open_clip model, e.g. '
            'ViT-B-16) and --distill-pretrained (a tag such as openai, or a checkpoint file)')
    if not _known_model(a.distill_model):
        raise SpikeTrainError(f'unknown teacher model {a.distill_model!r} (--distill-model): not an open_clip model')
    if cfg.loss == 'dual' and cfg.classnames is None:
        raise SpikeTrainError('stage 2 (--spike-loss dual) needs the class names of the dataset: pass '
                              '--spike-classnames NAME_OR_FILE (captions must be those names or prompts of them)')
    if cfg.loss == 'dual' and a.lock_text_unlocked_layers:
        raise SpikeTrainError('stage 2 freezes the whole text tower (its class embeddings are computed once); '
                              'drop --lock-text-unlocked-layers')
    if cfg.rate_weight < 0:
        raise SpikeTrainError(f'--spike-rate-weight must be >= 0, got {cfg.rate_weight}')
    if not 0 <= cfg.rate_target <= 1:
        raise SpikeTrainError(f'--spike-rate-target is a firing rate (spikes per neuron per step) in [0, 1], '
                              f'got {cfg.rate_target}')
    if cfg.teacher_cache and a.aug_cfg:
        raise SpikeTrainError('--spike-teacher-cache keys the teacher\'s features by the exact preprocessed input, '
                              'so training images are not augmented: drop --aug-cfg (or the cache)')
    if a.accum_freq != 1:
        raise SpikeTrainError('--accum-freq > 1 is not supported with distillation (open_clip_train asserts it)')
    _validate_numbers_and_paths(cfg, a)


def _looks_like_file(value: Optional[str]) -> bool:
    """A --pretrained / --distill-pretrained value that names a file rather than a tag such as 'openai'."""
    return bool(value) and (os.sep in value or value.endswith(('.pt', '.pth', '.bin', '.safetensors')))


def _validate_numbers_and_paths(cfg: SpikeTrainConfig, a: argparse.Namespace) -> None:
    """Numbers and paths, checked before any model is built (upstream finds a missing file only after both)."""
    for flag, value, low in (('--epochs', a.epochs, 1), ('--batch-size', a.batch_size, 1), ('--workers', a.workers, 0),
                             ('--spike-save-every-steps', cfg.save_every_steps, 0),
                             ('--spike-max-bad-images', cfg.max_bad_images, 0)):
        if value < low:
            raise SpikeTrainError(f'{flag} must be >= {low}, got {value}')
    for flag, value in (('--lr', a.lr), ('--wd', a.wd), ('--spike-save-every-minutes', cfg.save_every_minutes)):
        if value is not None and not (value >= 0 and value != float('inf')):
            raise SpikeTrainError(f'{flag} must be a finite number >= 0, got {value}')
    if a.train_data is None and a.imagenet_val is None and a.val_data is None:
        raise SpikeTrainError('no data: pass --train-data FILE (a CSV or webdataset shards)')
    data_type = a.dataset_type
    for flag, value in (('--train-data', a.train_data), ('--val-data', a.val_data)):
        if value is None:
            continue
        if data_type == 'csv' or (data_type == 'auto' and value.endswith(('.csv', '.tsv'))):
            if not os.path.isfile(value):
                raise SpikeTrainError(f'{flag} {value!r}: no such file (a CSV with --csv-img-key and '
                                      f'--csv-caption-key columns)')
            try:
                check_csv(value, a.csv_img_key, a.csv_caption_key, a.csv_separator, flag)
            except DataCheckError as e:
                raise SpikeTrainError(str(e)) from None
        elif data_type in ('webdataset', 'auto') and '{' not in value and '::' not in value \
                and '://' not in value and not os.path.exists(value):
            raise SpikeTrainError(f'{flag} {value!r}: no such file')
    if a.imagenet_val is not None and not os.path.isdir(a.imagenet_val):
        raise SpikeTrainError(f'--imagenet-val {a.imagenet_val!r}: no such folder (an ImageFolder of class folders)')
    for flag, value in (('--distill-pretrained', a.distill_pretrained), ('--pretrained', a.pretrained)):
        if _looks_like_file(value) and not os.path.isfile(value):
            raise SpikeTrainError(f'{flag} {value!r}: no such file (a checkpoint file, or a pretrained tag such '
                                  f'as openai)')
    if cfg.teacher_cache and os.path.exists(cfg.teacher_cache) and not os.path.isdir(cfg.teacher_cache):
        raise SpikeTrainError(f'--spike-teacher-cache {cfg.teacher_cache!r} is a file; it must be a folder')

