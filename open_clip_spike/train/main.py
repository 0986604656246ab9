"""``spikeclip train`` / ``python -m open_clip_spike.train``: open_clip's own training loop with SpikeCLIP's losses.

Runs ``open_clip_train.main.main`` (open_clip_torch 3.3.0) with every one of its flags, plus this module's
``--spike-*`` flags. The teacher is any open_clip model given by ``--distill-model`` and ``--distill-pretrained``
(a tag such as ``openai``, or a local checkpoint file); both stages need it.

Stage 1 (``--spike-loss align``, `AlignmentLoss`): both towers distilled to the teacher's features; the captions
are any text (the paper uses class names in CLIP prompt templates). A tower that no loss term uses (e.g.
``--spike-text-weight 0``: images only, as the reference code trains them) is frozen and skipped.

Stage 2 (``--spike-loss dual``, `DualLoss`): the text tower is frozen (``--lock-text`` is implied). How labels
and class embeddings reach the loss inside open_clip's loop:

- every caption must be one of the class names of ``--spike-classnames`` or one of ``--spike-templates`` filled
  with a class name (e.g. a CSV whose ``title`` column is ``a photo of the digit three.``); a forward hook on the
  student maps the caption's tokens to the class index and adds ``labels`` to the model's output dict, which
  open_clip_train passes on to the loss. A caption that matches no class is an error, never a silent guess.
- the class embeddings ``L`` (mean of the normalised template embeddings, renormalised) are computed once from
  the frozen spiking text tower after the weights (and any ``--resume`` checkpoint) are loaded.
- during training the hooks skip both text towers (their outputs are not used by `DualLoss`).

Image size: when the teacher and the student take different input sizes (the paper: ViT-B/16 at 224, the
spiking student at 32), the data is loaded at the larger size with that model's preprocessing and each model's
forward pre-hook resizes (bilinear, antialiased) and renormalises its input; so the student sees CLIP's
preprocessing followed by a bilinear resize to 32x32, as in the reference code, and the teacher its native size.
Tokens: the loop tokenizes with the student's tokenizer; the teacher (same tokenizer family required) gets them
zero-padded to its context length, which is what its own tokenizer would give for captions that fit the student's
context.

Energy-aware training (both stages): ``--spike-rate-weight W --spike-rate-target R`` adds the loss term
``rate_loss`` = W x mean over the student's neuron layers of (firing rate - R)^2 (``--spike-rate-mode hinge``:
only rates above R count). Forward hooks on the student's neurons (`SpikeRateCollector`) put the differentiable
per-layer rates into the output dict; open_clip_train logs ``rate_loss`` per step like the other terms.

Interrupted runs: rerunning the same command continues from the last checkpoint and ends exactly where an
uninterrupted run ends (checkpoints carry the random state; see ``open_clip_spike.train.resume``); a run folder
without a checkpoint (killed or failed in its first epoch) never blocks the rerun; another command for an existing
``--name`` is refused with the differences listed. Paths, numbers and training CSVs are checked before any model
is built. A run holds its folder while it lives (a second run on the name is refused), and SIGTERM / SIGUSR1 make
it write a mid-epoch checkpoint and exit with code 75 (``open_clip_spike.train.safety``); the rerun resumes from it
exactly. The options are parsed in ``params.py``, the hooks on the models live in ``hooks.py``.

Patches of open_clip_train all live in ``open_clip_spike.train.patches``, each with its reason. Checkpoints:
open_clip_train writes ``checkpoints/epoch_N.pt`` (a pickle, for ``--resume``); after the run this module also
writes ``epoch_N.safetensors`` (the model weights only), which loads with
``open_clip.create_model_and_transforms(name, pretrained=<file>)`` without unpickling anything.
"""
import argparse
import glob
import json
import logging
import os
import shutil
import sys
import time
from typing import List, Optional, Tuple

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

import open_clip_spike  # noqa: F401  (registers the SpikeCLIP model configs with open_clip)
from open_clip_spike.locking import FolderInUseError
from open_clip_spike.loss import AlignmentLoss, DualLoss, SpikeRateCollector
from open_clip_spike.checkpoint import export_checkpoint
from open_clip_spike.factory import check_model_config_env
from open_clip_spike.teacher_cache import CachedTeacher, StaleCacheError, TeacherFeatureCache, weights_digest
from timm_spike.utils import bf16_is_native

from .hooks import CaptionLabeler, InputAdapter, Relabel, SwitchableTransform, pp_cfg
from .params import (LOGS_ENV, SpikeTrainConfig, SpikeTrainError, resolve_classnames_templates, spike_parser,
                     student_image_used, student_text_used, validate)
from .patches import patched_open_clip_train, zero_shot_names
from .data import BadImageCounter, DataCheckError
from .resume import ResumeError, ResumeState, prepare_experiment
from .safety import PREEMPTED_EXIT, Preempted, PreemptionHandler, RunFolderError, StepPolicy, hold_run_folder

__all__ = ['CaptionLabeler', 'SpikeTrainConfig', 'SpikeTrainError', 'default_precision', 'main',
           'resolve_classnames_templates']

_logger = logging.getLogger(__name__)

_InputAdapter = InputAdapter  # the name the tests and older code use


# ---------------------------------------------------------------------------------------------------------------
# The run: what the patched functions of open_clip_train call

def _embed_dim(model: nn.Module, name: str) -> int:
    cfg = open_clip.get_model_config(name)
    if cfg and 'embed_dim' in cfg:
        return int(cfg['embed_dim'])
    # hf-hub: / local-dir: models have no local config: ask the model.
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.encode_image(torch.zeros(1, 3, *pp_cfg(model)['size'], device=p.device, dtype=p.dtype))
    model.train(was_training)
    return out.shape[-1]


class _Run:
    """State of one ``spikeclip train`` run, shared by the patched open_clip_train functions."""

    def __init__(self, cfg: SpikeTrainConfig, oc_args: argparse.Namespace):
        self.cfg = cfg
        self.oc_args = oc_args  # parsed up front from the same argv; main() parses its own copy
        self.classnames, self.templates = resolve_classnames_templates(cfg.classnames, cfg.templates)
        self.student: Optional[nn.Module] = None
        self.teacher: Optional[nn.Module] = None
        self.student_adapter: Optional[InputAdapter] = None
        self.teacher_adapter: Optional[InputAdapter] = None
        self.transforms: Tuple[SwitchableTransform, ...] = ()
        self.args: Optional[argparse.Namespace] = None  # main()'s args, seen by create_loss
        self.rate_collector: Optional[SpikeRateCollector] = None
        self.cache: Optional[TeacherFeatureCache] = None
        self.bad_images = BadImageCounter(cfg.max_bad_images)  # CSV samples whose image could not be read

    def close(self) -> None:
        """Release what the run holds beyond its lifetime in memory (the teacher cache's folder lock)."""
        if self.cache is not None:
            self.cache.close()

    @property
    def _student_text_used(self) -> bool:
        return student_text_used(self.cfg)

    @property
    def _teacher_text_used(self) -> bool:
        return self.cfg.loss == 'align' and self.cfg.text_weight > 0

    # open_clip_train.main.create_model_and_transforms: first call = student, second = teacher.
    def create_model_and_transforms(self, *args, **kwargs):
        model, pp_train, pp_val = open_clip.create_model_and_transforms(*args, **kwargs)
        if self.student is None:
            self.student = model
            self.student_adapter = InputAdapter(model, drop_text='never' if self._student_text_used else 'train')
            self.student_adapter.attach(model)
            if self.cfg.rate_weight > 0:  # differentiable firing rates into the output dict, for rate_loss
                try:
                    self.rate_collector = SpikeRateCollector(model)
                except ValueError as e:
                    raise SpikeTrainError(f'--spike-rate-weight: {e}') from e
            self.transforms = (SwitchableTransform(pp_train), SwitchableTransform(pp_val))
            return model, self.transforms[0], self.transforms[1]
        self.teacher = model
        model.requires_grad_(False)  # upstream leaves the teacher trainable (and DDP-wraps it)
        self._check_teacher()
        self.teacher_adapter = InputAdapter(model, drop_text='never' if self._teacher_text_used else 'always')
        self.teacher_adapter.attach(model)
        self._set_up_inputs()
        if self.cfg.teacher_cache:
            return self._cached_teacher(model), pp_train, pp_val
        return model, pp_train, pp_val

    def _cached_teacher(self, teacher: nn.Module) -> CachedTeacher:
        a, ad = self.oc_args, self.teacher_adapter
        # an augmented image would never hit the cache: training images get the validation preprocessing
        self.transforms[0].transform = self.transforms[1].transform
        fingerprint = {
            'teacher': a.distill_model,
            'pretrained': a.distill_pretrained,
            'weights_blake2b': weights_digest(teacher),
            'data_preprocess': repr(self.transforms[1]),
            'teacher_input': {'size': list(ad.size), 'mean': ad.mean.flatten().tolist(),
                              'std': ad.std.flatten().tolist(), 'data_mean': ad.data_mean.flatten().tolist(),
                              'data_std': ad.data_std.flatten().tolist()},
            'context_length': ad.context_length,
            'precision': a.precision,
        }
        try:
            rank = int(os.environ.get('RANK', 0))
            self.cache = TeacherFeatureCache(self.cfg.teacher_cache, fingerprint, rank=rank, lock=True)
        except (StaleCacheError, FolderInUseError) as e:
            raise SpikeTrainError(f'--spike-teacher-cache: {e}' if isinstance(e, FolderInUseError) else str(e)) from e
        image = self.cfg.loss == 'dual' or self.cfg.image_weight > 0
        _logger.info(f'teacher-feature cache {self.cfg.teacher_cache}: {self.cache.stats()["entries"]} features '
                     f'cached; training images are not augmented')
        return CachedTeacher(teacher, self.cache, image=image, text=self._teacher_text_used)

    def _check_teacher(self) -> None:
        a = self.oc_args
        d_s, d_t = _embed_dim(self.student, a.model), _embed_dim(self.teacher, a.distill_model)
        if d_s != d_t:
            raise SpikeTrainError(
                f'teacher {a.distill_model!r} has embedding size {d_t}, student {a.model!r} {d_s}: the losses '
                f'compare their embeddings directly, so pick a teacher with a {d_s}-d embedding (the paper\'s '
                f'is ViT-B-16/openai, 512-d)')

    def _set_up_inputs(self) -> None:
        a = self.oc_args
        s_cfg, t_cfg = pp_cfg(self.student), pp_cfg(self.teacher)
        s_area, t_area = s_cfg['size'][0] * s_cfg['size'][1], t_cfg['size'][0] * t_cfg['size'][1]
        src = self.teacher_adapter if t_area > s_area else self.student_adapter
        if t_area > s_area:
            pp = PreprocessCfg(**{k: v for k, v in t_cfg.items() if k in PreprocessCfg.__annotations__})
            self.transforms[0].transform = image_transform_v2(pp, is_train=True, aug_cfg=a.aug_cfg)
            self.transforms[1].transform = image_transform_v2(pp, is_train=False)
            _logger.info(f'data loaded at the teacher\'s {t_cfg["size"]}; the student\'s input resized to '
                         f'{s_cfg["size"]}')
        for adapter in (self.student_adapter, self.teacher_adapter):
            adapter.set_data_norm(src.mean, src.std)
        if self._teacher_text_used:
            s_tok = open_clip.get_tokenizer(a.model, context_length=a.force_context_length)
            t_tok = open_clip.get_tokenizer(a.distill_model)
            if type(s_tok) is not type(t_tok):
                raise SpikeTrainError(
                    f'student tokenizer {type(s_tok).__name__} and teacher tokenizer {type(t_tok).__name__} '
                    'differ; the loop feeds both the student\'s tokens, so the teacher must use the same one')
            if s_tok.context_length > t_tok.context_length:
                raise SpikeTrainError(
                    f'student context length {s_tok.context_length} exceeds the teacher\'s '
                    f'{t_tok.context_length}; pass --force-context-length {t_tok.context_length} or smaller')
            self.teacher_adapter.context_length = t_tok.context_length

    # open_clip_train.main.create_loss
    def create_loss(self, args: argparse.Namespace) -> nn.Module:
        self.args = args
        c = self.cfg
        rate = dict(rate_weight=c.rate_weight, rate_target=c.rate_target, rate_mode=c.rate_mode)
        if c.loss == 'align':
            return AlignmentLoss(
                image_weight=c.image_weight, text_weight=c.text_weight, contrastive_weight=c.contrastive_weight,
                local_loss=args.local_loss, gather_with_grad=args.gather_with_grad,
                rank=args.rank, world_size=args.world_size, use_horovod=args.horovod, **rate)
        text_tower = getattr(self.student, 'text', None)
        if text_tower is not None and any(p.requires_grad for p in text_tower.parameters()):
            raise SpikeTrainError(f'{args.model}: lock_text_tower() left text parameters trainable; stage 2 needs '
                                  'the text tower frozen')
        tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length)
        self.student_adapter.labeler = CaptionLabeler(tokenizer, self.classnames, self.templates)
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            L = open_clip.build_zero_shot_classifier(
                self.student, tokenizer=tokenizer, classnames=self.classnames, templates=self.templates,
                num_classes_per_batch=10, device=args.device)
        self.student.train(was_training)
        _logger.info(f'stage 2: class embeddings of {len(self.classnames)} classes x {len(self.templates)} '
                     f'templates from the frozen text tower')
        return DualLoss(L.float(), kl_weight=c.kl_weight, kl_temperature=c.kl_temperature, **rate).to(args.device)

    # open_clip_train.train.zero_shot_eval
    def zero_shot_eval(self, model, data, epoch, args, tokenizer=None):
        if self.classnames is None or 'imagenet-val' not in data:
            return self._upstream_zero_shot_eval(model, data, epoch, args, tokenizer=tokenizer)
        dataset = data['imagenet-val'].dataloader.dataset
        folders = list(dataset.classes)
        names = ordered = self.classnames
        if set(folders) <= set(names):
            # folders named after (some of) the classes: relabel ImageFolder's sorted indices to class indices,
            # so the classifier always covers the full class set
            dataset.target_transform = Relabel([names.index(f) for f in folders])
        elif len(folders) == len(names):
            pass  # folders sorted in class-name order (e.g. 0_tshirt, 1_trouser, ...)
        else:
            raise SpikeTrainError(
                f'zero-shot folder {args.imagenet_val!r} has {len(folders)} class folders, --spike-classnames '
                f'{len(names)} names; name the folders after the classes or sort them in class order')
        with zero_shot_names(ordered, self.templates):
            results = self._upstream_zero_shot_eval(model, {'imagenet-val': data['imagenet-val']}, epoch, args,
                                                    tokenizer=tokenizer)
        return {k.replace('imagenet-zeroshot', 'zeroshot'): v for k, v in results.items()}

    _upstream_zero_shot_eval = None  # set by patched_open_clip_train
    _upstream_train_one_epoch = None

    # open_clip_train.main.train_one_epoch
    def train_one_epoch(self, model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs):
        start = time.perf_counter()
        try:
            out = self._upstream_train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model,
                                                 args, **kwargs)
        finally:
            if self.cache is not None:
                self.cache.flush()  # also after an interrupted epoch: its finished batches stay cached
        if self.cache is not None:
            self.cache.compact()  # the epoch's per-batch shards merged into one
        # only finished epochs are recorded (a resumed run trims records past its checkpoint and writes them again)
        seconds = time.perf_counter() - start
        record = {'epoch': epoch + 1, 'seconds': round(seconds, 3)}
        if self.cache is not None:
            record['teacher_cache'] = self.cache.stats(reset=True)  # this epoch's hits and misses
        bad = self.bad_images.take_epoch()
        if bad:
            record['skipped_images'] = bad
        _logger.info(f'epoch {epoch + 1}: {seconds:.1f} s' + (
            f', teacher cache {record["teacher_cache"]}' if 'teacher_cache' in record else ''))
        base = os.path.dirname(getattr(args, 'checkpoint_path', '') or '')  # main()'s log_base_path
        if base and getattr(args, 'rank', 0) == 0 and os.path.isdir(base):
            with open(os.path.join(base, 'spike_epochs.jsonl'), 'a') as f:
                f.write(json.dumps(record) + '\n')
        return out


# Checkpoint export

def _export_all(checkpoint_dir: str) -> List[str]:
    written = []
    for pt in sorted(glob.glob(os.path.join(checkpoint_dir, 'epoch_*.pt'))):
        out = os.path.splitext(pt)[0] + '.safetensors'
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(pt):
            written.append(export_checkpoint(pt, out))
            _logger.info(f'exported {out}')
    return written


# ---------------------------------------------------------------------------------------------------------------
# Entry point
def default_precision(rest: List[str]) -> List[str]:
    """open_clip_train's options with ``--precision fp32`` put first when none is given and the run is on a CPU
    without native bf16: open_clip_train's default ``amp`` is bf16 autocast there, emulated and many times slower
    than fp32 (a SpikeCLIP-SEWResNet-18 step of batch 4 at 32x32: 20 s under it, 1.5 s in fp32, AVX2). Elsewhere,
    and with ``--precision`` given, the options are returned unchanged. Put first, not last, so that a precision
    argparse still reads from a later option (an abbreviation such as ``--prec amp``) wins over it."""
    if any(r == '--precision' or r.startswith('--precision=') for r in rest):
        return rest
    device = next((rest[i + 1] for i, r in enumerate(rest[:-1]) if r == '--device'), None)
    device = next((r.split('=', 1)[1] for r in rest if r.startswith('--device=')), device)
    on_cpu = (device or ('cuda' if torch.cuda.is_available() else 'cpu')).startswith('cpu')
    if not on_cpu or bf16_is_native():
        return rest
    _logger.info('--precision fp32: open_clip_train\'s default amp would emulate bfloat16 on this CPU '
                 '(pass --precision amp to keep it)')
    return ['--precision', 'fp32'] + rest


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the ``--spike-*`` options, hand the rest to open_clip_train and return an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = spike_parser()
    if '-h' in argv or '--help' in argv:
        parser.print_help()
        print('\nopen_clip_train options:')
        from open_clip_train.params import parse_args
        try:
            parse_args(['--help'])
        except SystemExit:
            pass
        return 0
    ns, rest = parser.parse_known_args(argv)
    try:
        check_model_config_env()
    except FileNotFoundError as e:
        print(f'spikeclip train: error: {e}', file=sys.stderr)
        return 2
    cfg = SpikeTrainConfig(**{**vars(ns), 'model_configs': tuple(ns.model_configs)})
    logs = cfg.logs or os.environ.get(LOGS_ENV)
    if logs:
        if any(r == '--logs' or r.startswith('--logs=') for r in rest):
            print('spikeclip train: error: give the log folder once (--logs or --spike-logs/$SPIKECLIP_LOGS)',
                  file=sys.stderr)
            return 2
        rest += ['--logs', logs]
    # A tower whose features no loss term uses is frozen (stage 2: the text tower, as in the paper): its weights
    # could not learn anything, and DDP refuses trainable parameters that get no gradient.
    if not student_text_used(cfg) and '--lock-text' not in rest:
        rest.append('--lock-text')
    if not student_image_used(cfg) and '--lock-image' not in rest:
        rest.append('--lock-image')
    rest = default_precision(rest)
    for path in cfg.model_configs:
        if not os.path.exists(path):
            print(f'spikeclip train: error: --spike-model-config {path!r} does not exist', file=sys.stderr)
            return 2
        open_clip.add_model_config(path)

    from open_clip_train.main import main as open_clip_train_main
    from open_clip_train.params import parse_args
    new_dir, lock, run = None, None, None
    handler = PreemptionHandler()
    try:
        oc_args = parse_args(rest)
        validate(cfg, oc_args)
        run = _Run(cfg, oc_args)
        if oc_args.name and oc_args.logs and oc_args.logs.lower() != 'none':
            folder = os.path.join(oc_args.logs, oc_args.name)
            new_dir = None if os.path.exists(folder) else folder  # made for the lock: removed if refused
            lock = hold_run_folder(folder, 'spikeclip train')
        rest = prepare_experiment(argv, rest, oc_args.logs, oc_args.name, oc_args.resume)
        run.oc_args = oc_args = parse_args(rest)
        if oc_args.name and oc_args.logs and oc_args.logs.lower() != 'none' and oc_args.resume is None:
            new_dir = os.path.join(oc_args.logs, oc_args.name)  # a fresh attempt: removed if refused
        state = ResumeState()
        state.policy = StepPolicy(cfg.save_every_steps, cfg.save_every_minutes, handler)
        state.check_batch = run.bad_images
        with handler, patched_open_clip_train(run, state):
            rc = open_clip_train_main(rest)
    except Preempted as e:
        _logger.warning(str(e))
        print(f'spikeclip train: {e} (exit code {PREEMPTED_EXIT})', file=sys.stderr)
        return PREEMPTED_EXIT
    except (SpikeTrainError, ResumeError, RunFolderError, DataCheckError) as e:
        _logger.error(str(e))
        print(f'spikeclip train: error: {e}', file=sys.stderr)
        # A run refused before its first checkpoint leaves no experiment folder behind (a rerun with the same
        # --name would otherwise find it).
        if new_dir and os.environ.get('RANK', '0') == '0' and os.path.isdir(new_dir) \
                and not glob.glob(os.path.join(new_dir, '**', '*.pt'), recursive=True):
            shutil.rmtree(new_dir, ignore_errors=True)
        return 2
    except KeyboardInterrupt:
        print('spikeclip train: interrupted; rerun the same command to continue from the last checkpoint',
              file=sys.stderr)
        return 130
    finally:
        if run is not None:
            run.close()
        if lock is not None:
            lock.release()
    if rc is not None and rc != 0:  # upstream returns -1 on some errors, after logging them
        return 1
    args = run.args
    if cfg.export_safetensors and args is not None and getattr(args, 'save_logs', False):
        _export_all(args.checkpoint_path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
