"""Exact resumption of open_clip_train runs: a run killed at any moment and rerun with the same command ends with
the weights, metrics and logs of an uninterrupted run (same machine, same thread count).

open_clip_train (3.3.0) checkpoints hold ``epoch``, ``name``, ``state_dict``, ``optimizer`` (and ``scaler``):
no random-number state, so a resumed run draws another data order, other dropout masks... and ends elsewhere. Its
``torch.save`` writes in place (a kill mid-write leaves a truncated ``epoch_N.pt`` that ``--resume latest`` then
picks and fails on, on every rerun), and ``--resume latest`` takes the file that sorts last, readable or not.

What this module adds, through the patches of ``open_clip_spike.train.patches``:

- **Random state per epoch.** At the end of every epoch the torch (CPU and CUDA), numpy and python RNG states are
  captured, and the next epoch starts from exactly that state, in the running process and in a resumed one alike
  (the evaluation between two epochs draws random numbers too, e.g. its loader's seed, so restoring at the epoch
  start is what makes both paths equal). The data order of an epoch is drawn from that torch state when its loader
  starts (``RandomSampler``; worker seeds likewise), so it is restored with it.
- **Checkpoints carry it**: ``spike_resume`` = ``{'rng': ..., 'epoch', 'step'}`` next to upstream's keys, all
  tensors and numbers (loads with ``torch.load(weights_only=True)``). Every checkpoint is written to a temporary
  file and renamed, so a kill mid-write leaves the previous checkpoint intact (and the temporary file is removed
  by the next run).
- **Mid-epoch checkpoints** (``checkpoints/step_latest.pt``, written by `ResumeState.save_step` on a preemption
  signal or every N steps / minutes, see ``open_clip_spike.train.safety``) carry, besides upstream's keys with
  ``epoch`` = the finished epochs, the random state the unfinished epoch started from, the state at the step
  boundary and ``epoch_step``, the steps of that epoch already trained: the resumed run repeats the epoch's data
  order, skips those steps and goes on exactly. The next epoch checkpoint removes it.
- **Write errors are named.** A full disk or a folder that cannot be written while a checkpoint is written stops
  the run with one line (``no space left on device``, ``permission denied: <folder>``); the temporary file is
  removed and the earlier checkpoint stays intact.
- **Latest readable checkpoint**: ``--resume latest`` takes the newest ``epoch_N.pt`` (or ``epoch_latest.pt``)
  that loads; an unreadable one is set aside as ``<name>.corrupt`` with a warning. Per-epoch records written after
  that checkpoint (``results.jsonl``, ``spike_epochs.jsonl``) are dropped, so the rerun writes them once.
- **The same command resumes**: the first run records its command line in ``<logs>/<name>/spike_command.json``;
  rerunning the same command continues from the latest checkpoint (``--resume latest`` is implied), another
  command is refused with the differences listed. A folder without any checkpoint (a run killed or failed in its
  first epoch) is an attempt with nothing to keep: it is removed and the run starts afresh.
"""
import errno
import json
import logging
import os
import random
import re
import shutil
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from timm_spike._faults import fault_point
from timm_spike.utils import atomic_write, remove_stale_temps, temp_prefix

from open_clip_spike.locking import LOCK_NAME

from .safety import Preempted, StepLoader, StepPolicy

__all__ = ['COMMAND_FILE', 'STEP_CHECKPOINT', 'CheckpointWriteError', 'ResumeError', 'ResumeState', 'get_rng_state',
           'prepare_experiment', 'set_rng_state']

_logger = logging.getLogger(__name__)

COMMAND_FILE = 'spike_command.json'
RESUME_KEY = 'spike_resume'
STEP_CHECKPOINT = 'step_latest.pt'  # the mid-epoch checkpoint
_CKPT_RE = re.compile(r'^(?:epoch_(\d+|latest)|step_latest)\.pt$')
_UPSTREAM_KEYS = {'epoch', 'name', 'state_dict', 'optimizer'}  # what open_clip_train's checkpoint dict holds


class ResumeError(ValueError):
    """The run folder cannot be continued with this command; the message says what to do."""


class CheckpointWriteError(ResumeError):
    """A checkpoint could not be written (full disk, no permission); the earlier checkpoint is intact."""


# ---------------------------------------------------------------------------------------------------------------
# Random state as tensors (so checkpoints stay loadable with weights_only=True)

def get_rng_state() -> Dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python random states, as tensors and numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy_keys': torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        'numpy_pos': int(pos), 'numpy_has_gauss': int(has_gauss), 'numpy_gauss': float(gauss),
        'python_version': int(version), 'python_internal': torch.tensor(internal, dtype=torch.int64),
        'python_gauss': float('nan') if gauss_next is None else float(gauss_next),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(('MT19937', state['numpy_keys'].numpy().astype(np.uint32), int(state['numpy_pos']),
                         int(state['numpy_has_gauss']), float(state['numpy_gauss'])))
    gauss = float(state['python_gauss'])
    random.setstate((int(state['python_version']), tuple(int(v) for v in state['python_internal'].tolist()),
                     None if gauss != gauss else gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state['cuda']))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files

def _checkpoint_files(folder: str) -> List[str]:
    """``step_latest.pt`` (mid-epoch) and ``epoch_latest.pt`` first (the most recent by definition), then
    ``epoch_N.pt`` from the highest N."""
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if _CKPT_RE.match(n)]

    def order(n: str):
        epoch = _CKPT_RE.match(n)[1]
        return (n != STEP_CHECKPOINT, n != 'epoch_latest.pt', -int(epoch) if epoch and epoch.isdigit() else 0)
    names.sort(key=order)
    return [os.path.join(folder, n) for n in names]


def _highest_epoch_file(folder: str) -> int:
    return max([int(m[1]) for m in map(_CKPT_RE.match, os.listdir(folder)) if m and m[1] and m[1].isdigit()],
               default=0)


_WRITE_ERRORS = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded'}


def _write_error(e: BaseException, path: str, tmp: str) -> Optional[str]:
    """What stopped a checkpoint write, in a few words, or None for an error that is not about the disk."""
    folder = os.path.dirname(path)
    if isinstance(e, OSError) and e.errno in _WRITE_ERRORS:
        return _WRITE_ERRORS[e.errno]
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f'permission denied: {folder}'
    if isinstance(e, RuntimeError):  # torch's zip writer reports a short write as 'unexpected pos N vs M'
        try:
            st = os.statvfs(folder)
            if st.f_bavail * st.f_frsize < 16 * 2 ** 20:
                return 'no space left on device'
        except OSError:
            pass
    return None


def _load(path: str) -> Dict[str, Any]:
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt or 'epoch' not in ckpt:
        raise ValueError('not an open_clip_train checkpoint (no epoch / state_dict)')
    return ckpt


def _trim_jsonl(path: str, last_epoch: int) -> None:
    """Drop the records of epochs after ``last_epoch`` (written after the checkpoint a run resumes from)."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                dropped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get('epoch'), (int, float)) and rec['epoch'] > last_epoch:
                dropped += 1
                continue
            kept.append(line if line.endswith('\n') else line + '\n')
    if dropped:
        atomic_write(path, ''.join(kept).encode())
        _logger.info(f'{path}: dropped {dropped} record(s) written after epoch {last_epoch}')


class ResumeState:
    """What the resume patches share during one open_clip_train run (see the module docstring)."""

    def __init__(self):
        self.rng: Optional[Dict[str, Any]] = None  # state the next epoch starts from
        self.loaded: Dict[str, Dict[str, Any]] = {}  # checkpoints read while picking the latest, by path
        self.steps_done = 0
        self.log_base: Optional[str] = None
        self.epoch_step = 0  # steps of the unfinished epoch a mid-epoch checkpoint already trained on
        self.step_rng: Optional[Dict[str, Any]] = None  # random state at that step boundary
        self.policy = StepPolicy()  # when to write mid-epoch checkpoints (set by the command)
        self.torch_save: Callable = torch.save  # the real torch.save (torch.save itself is patched during a run)
        self.check_batch: Optional[Callable[[Any], bool]] = None  # sees every training batch (skipped images)

    # open_clip_train.main.get_latest_checkpoint
    def get_latest_checkpoint(self, path: str, remote: bool = False) -> Optional[str]:
        if remote:
            raise ResumeError('--resume latest with --remote-sync is not supported by spikeclip\'s exact resume')
        folder = path.rstrip('/')
        self.log_base = os.path.dirname(folder)
        remove_stale_temps(folder)
        upstream_tmp = os.path.join(folder, 'tmp.pt')  # upstream's --save-most-recent temporary: never complete
        if os.path.exists(upstream_tmp):
            os.unlink(upstream_tmp)
        for ckpt_path in _checkpoint_files(folder):
            if os.path.basename(ckpt_path) == STEP_CHECKPOINT and self._stale_step_checkpoint(ckpt_path, folder):
                continue
            try:
                ckpt = _load(ckpt_path)
            except Exception as e:  # noqa: BLE001 -- any unreadable file is set aside the same way
                aside = ckpt_path + '.corrupt'
                os.replace(ckpt_path, aside)
                _logger.warning(f'checkpoint {ckpt_path} is unreadable ({type(e).__name__}: {str(e)[:200]}); '
                                f'set aside as {aside}, trying the previous one')
                continue
            self.loaded = {ckpt_path: ckpt}
            epoch = int(ckpt['epoch'])
            _trim_jsonl(os.path.join(folder, 'results.jsonl'), epoch)
            _trim_jsonl(os.path.join(self.log_base, 'spike_epochs.jsonl'), epoch)
            if RESUME_KEY not in ckpt:
                _logger.warning(f'{ckpt_path} holds no random state (written without spikeclip\'s resume '
                                f'patches): the resumed run will not repeat an uninterrupted one exactly')
            return ckpt_path
        return None

    def _stale_step_checkpoint(self, path: str, folder: str) -> bool:
        """A mid-epoch checkpoint older than the newest epoch checkpoint (a kill between writing the epoch
        checkpoint and removing it) is removed."""
        try:
            ckpt = _load(path)
        except Exception:  # noqa: BLE001 -- set aside like any unreadable checkpoint, by the caller's loop
            return False
        if int(ckpt['epoch']) >= _highest_epoch_file(folder):
            return False
        os.unlink(path)
        _logger.info(f'{path} is older than the newest epoch checkpoint: removed')
        return True

    # open_clip_train.main.pt_load (its --resume loader)
    def pt_load(self, file_path: str, map_location: Any = None) -> Dict[str, Any]:
        ckpt = self.loaded.pop(file_path, None)
        if ckpt is None:
            from open_clip_train.file_utils import pt_load
            ckpt = pt_load(file_path, map_location=map_location)
        extra = ckpt.get(RESUME_KEY) if isinstance(ckpt, dict) else None
        if extra is not None:
            self.rng = extra['rng']
            self.steps_done = int(extra.get('step', 0))
            self.epoch_step = int(extra.get('epoch_step', 0))
            self.step_rng = extra.get('step_rng')
        return ckpt

    # torch.save while the run lasts: upstream's checkpoint dicts get the random state and an atomic write
    def save(self, upstream_save: Callable, obj: Any, f: Any, *args, **kwargs) -> None:
        if not (isinstance(obj, dict) and _UPSTREAM_KEYS <= set(obj) and isinstance(f, (str, os.PathLike))):
            return upstream_save(obj, f, *args, **kwargs)
        if self.rng is not None:
            obj = dict(obj, **{RESUME_KEY: {'rng': self.rng, 'epoch': int(obj['epoch']), 'step': self.steps_done,
                                            'epoch_step': 0}})
        path = os.fspath(f)
        self._write(upstream_save, obj, path, *args, **kwargs)
        step_ckpt = os.path.join(os.path.dirname(os.path.abspath(path)), STEP_CHECKPOINT)
        if os.path.exists(step_ckpt):  # superseded by this epoch checkpoint
            os.unlink(step_ckpt)

    def _write(self, upstream_save: Callable, obj: Any, path: str, *args, **kwargs) -> None:
        """Write through a temporary file and rename; a disk error becomes `CheckpointWriteError`."""
        folder, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(folder, temp_prefix(name) + 'part')
        try:
            remove_stale_temps(folder)
            upstream_save(obj, tmp, *args, **kwargs)
            fault_point('checkpoint.write')
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            what = _write_error(e, path, tmp)
            if what is None:
                raise
            kept = [p for p in _checkpoint_files(folder) if os.path.abspath(p) != os.path.abspath(path)]
            raise CheckpointWriteError(
                f'cannot write the checkpoint {path}: {what}; ' + (
                    f'the earlier checkpoint {os.path.basename(kept[0])} is intact: make room (or fix the '
                    f'folder) and rerun the same command to continue' if kept else
                    'make room (or fix the folder) and rerun the same command')) from None
        finally:
            try:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            except OSError:
                pass

    def save_step(self, model: Any, optimizer: Any, scaler: Any, args: Any, epoch: int, epoch_step: int,
                  epoch_rng: Dict[str, Any], step_rng: Dict[str, Any]) -> Optional[str]:
        """Write the mid-epoch checkpoint (rank 0; None on other ranks or without a checkpoint folder)."""
        folder = getattr(args, 'checkpoint_path', None)
        if not getattr(args, 'save_logs', False) or not folder:
            return None
        path = os.path.join(folder, STEP_CHECKPOINT)
        if getattr(args, 'rank', 0) != 0:
            return path
        model = getattr(model, '_orig_mod', model)  # torch.compile'd: the original module, as upstream saves it
        ckpt = {'epoch': epoch, 'name': args.name, 'state_dict': model.state_dict(),
                'optimizer': optimizer.state_dict()}
        if scaler is not None:
            ckpt['scaler'] = scaler.state_dict()
        steps = int(getattr(args, '_spike_steps_per_epoch', 0)) * epoch + epoch_step
        ckpt[RESUME_KEY] = {'rng': epoch_rng, 'epoch': epoch, 'step': steps, 'epoch_step': epoch_step,
                            'step_rng': step_rng}
        self._write(self.torch_save, ckpt, path)
        _logger.info(f'mid-epoch checkpoint {path}: epoch {epoch + 1}, step {epoch_step}')
        return path

    def wrap_train_one_epoch(self, inner: Callable) -> Callable:
        """open_clip_train.main.train_one_epoch: each epoch starts from the random state its predecessor ended
        with (captured here, saved in the checkpoint); a fault point before every batch."""
        def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs):
            if self.rng is not None:
                set_rng_state(self.rng)
            epoch_rng = self.rng if self.rng is not None else get_rng_state()
            start, start_rng = self.epoch_step, self.step_rng  # a mid-epoch checkpoint's steps, only this epoch
            self.epoch_step, self.step_rng = 0, None
            info = data['train']
            loader = info.dataloader
            n = loader.num_batches
            args._spike_steps_per_epoch = n
            policy = self.policy

            def boundary(i: int) -> None:
                if not policy.active:
                    return
                save, preempted = policy.decide(n * epoch + i, first=i == start)
                if not save:
                    return
                path = self.save_step(model, optimizer, scaler, args, epoch, i, epoch_rng, get_rng_state())
                policy.saved()
                if preempted:
                    raise Preempted(policy.handler.signame or 'another rank\'s signal', path, epoch, i)

            info.dataloader = StepLoader(loader, getattr(args, 'name', None), start=start, start_rng=start_rng,
                                         boundary=boundary, set_rng=set_rng_state, check_batch=self.check_batch)
            if start:
                _logger.info(f'epoch {epoch + 1}: resuming at step {start} of {n} (reading past the batches '
                             f'already trained on)')
            try:
                out = inner(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs)
            finally:
                info.dataloader = loader
            self.steps_done = (epoch + 1) * loader.num_batches
            self.rng = get_rng_state()
            return out
        return train_one_epoch


# ---------------------------------------------------------------------------------------------------------------
# The run folder: fresh, resumed or refused

def _strip_resume(argv: List[str]) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == '--resume':
            skip = True
            continue
        if a.startswith('--resume='):
            continue
        out.append(a)
    return out


def prepare_experiment(command: List[str], run_argv: List[str], logs: Optional[str], name: Optional[str],
                       resume: Optional[str]) -> List[str]:
    """Decide how a run uses its folder ``logs/name``; return the arguments to hand open_clip_train.

    ``command`` is the command line as the user gave it (it identifies the run), ``run_argv`` what open_clip_train
    gets (``--resume latest`` is added to it when the same command continues a run).

    - no folder: a fresh run (its command is recorded); ``--resume latest`` is an error (nothing to resume);
    - a folder without checkpoints: left by a run that died in its first epoch or failed; removed, fresh run;
    - checkpoints and the same command (``--resume`` aside), or ``--resume latest``: resumed from the latest;
    - checkpoints and another command: `ResumeError` listing the differences.

    Only rank 0 touches the folder. Runs without ``--name`` or with ``--logs none`` are left as they are.
    """
    if not name or not logs or logs.lower() == 'none':
        return run_argv
    folder = os.path.join(logs, name)
    command = _strip_resume(command)
    ckpts = _checkpoint_files(os.path.join(folder, 'checkpoints'))
    rank0 = os.environ.get('RANK', '0') == '0'
    if not ckpts:
        if resume == 'latest':
            raise ResumeError(f'--resume latest: {folder} holds no checkpoint to resume from (a run saves one '
                              f'after each finished epoch); drop --resume latest to start the run')
        left = [n for n in os.listdir(folder) if n != LOCK_NAME] if os.path.isdir(folder) else []
        if left and rank0:
            _logger.warning(f'{folder} holds no checkpoint (a run that stopped in its first epoch or failed): '
                            f'removed, starting afresh')
            for n in left:  # all but the lock this run holds on the folder
                p = os.path.join(folder, n)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    else:
        recorded = None
        record_path = os.path.join(folder, COMMAND_FILE)
        if os.path.exists(record_path):
            try:
                recorded = json.loads(open(record_path).read()).get('argv')
            except (OSError, ValueError, AttributeError):
                recorded = None
        if resume != 'latest':
            if recorded is None:
                raise ResumeError(f'experiment {name!r} already exists in {logs}: continue it with --resume latest, '
                                  f'or pick a new --name')
            if recorded != command:
                old, new = set(recorded), set(command)
                raise ResumeError(
                    f'experiment {name!r} in {logs} was run with another command (only there: '
                    f'{" ".join(a for a in recorded if a not in new) or "-"}; only here: '
                    f'{" ".join(a for a in command if a not in old) or "-"}); its checkpoints cannot continue this '
                    f'one. Rerun the same command to resume it, pass --resume latest to continue it anyway, pick a '
                    f'new --name, or delete {folder}')
            run_argv = _strip_resume(run_argv) + ['--resume', 'latest']
        _logger.info(f'resuming {folder} from its latest readable checkpoint')
    if rank0 and not os.path.exists(os.path.join(folder, COMMAND_FILE)):
        os.makedirs(folder, exist_ok=True)
        atomic_write(os.path.join(folder, COMMAND_FILE), (json.dumps({'argv': command}, indent=1) + '\n').encode())
    return run_argv
