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
- **Latest readable checkpoint**: ``--resume latest`` takes the newest ``epoch_N.pt`` (or ``epoch_latest.pt``)
  that loads; an unreadable one is set aside as ``<name>.corrupt`` with a warning. Per-epoch records written after
  that checkpoint (``results.jsonl``, ``spike_epochs.jsonl``) are dropped, so the rerun writes them once.
- **The same command resumes**: the first run records its command line in ``<logs>/<name>/spike_command.json``;
  rerunning the same command continues from the latest checkpoint (``--resume latest`` is implied), another
  command is refused with the differences listed. A folder without any checkpoint (a run killed or failed in its
  first epoch) is an attempt with nothing to keep: it is removed and the run starts afresh.
"""
import glob
import json
import logging
import os
import random
import re
import shutil
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from timm_spike.utils import atomic_write, fault_point, remove_stale_temps, temp_prefix

__all__ = ['COMMAND_FILE', 'ResumeError', 'ResumeState', 'get_rng_state', 'prepare_experiment', 'set_rng_state']

_logger = logging.getLogger(__name__)

COMMAND_FILE = 'spike_command.json'
RESUME_KEY = 'spike_resume'
_CKPT_RE = re.compile(r'^epoch_(\d+|latest)\.pt$')
_UPSTREAM_KEYS = {'epoch', 'name', 'state_dict', 'optimizer'}  # what open_clip_train's checkpoint dict holds


class ResumeError(ValueError):
    """The run folder cannot be continued with this command; the message says what to do."""


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
    """``epoch_latest.pt`` first (the most recent by definition), then ``epoch_N.pt`` from the highest N."""
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if _CKPT_RE.match(n)]
    names.sort(key=lambda n: (n != 'epoch_latest.pt', -int(_CKPT_RE.match(n)[1]) if n != 'epoch_latest.pt' else 0))
    return [os.path.join(folder, n) for n in names]


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
        return ckpt

    # torch.save while the run lasts: upstream's checkpoint dicts get the random state and an atomic write
    def save(self, upstream_save: Callable, obj: Any, f: Any, *args, **kwargs) -> None:
        if not (isinstance(obj, dict) and _UPSTREAM_KEYS <= set(obj) and isinstance(f, (str, os.PathLike))):
            return upstream_save(obj, f, *args, **kwargs)
        if self.rng is not None:
            obj = dict(obj, **{RESUME_KEY: {'rng': self.rng, 'epoch': int(obj['epoch']), 'step': self.steps_done}})
        path = os.fspath(f)
        folder, name = os.path.split(os.path.abspath(path))
        remove_stale_temps(folder)
        tmp = os.path.join(folder, temp_prefix(name) + 'part')
        try:
            upstream_save(obj, tmp, *args, **kwargs)
            fault_point('checkpoint.write')
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def wrap_train_one_epoch(self, inner: Callable) -> Callable:
        """open_clip_train.main.train_one_epoch: each epoch starts from the random state its predecessor ended
        with (captured here, saved in the checkpoint); a fault point before every batch."""
        def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs):
            if self.rng is not None:
                set_rng_state(self.rng)
            info = data['train']
            loader = info.dataloader
            info.dataloader = _FaultyLoader(loader, getattr(args, 'name', None))
            try:
                out = inner(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs)
            finally:
                info.dataloader = loader
            self.steps_done = (epoch + 1) * loader.num_batches
            self.rng = get_rng_state()
            return out
        return train_one_epoch


class _FaultyLoader:
    """A data loader that passes every batch through ``fault_point('train.batch')`` and
    ``fault_point('<run name>.batch')`` (no-ops outside tests)."""

    def __init__(self, loader, name: Optional[str] = None):
        self._loader = loader
        self._name = name

    def __iter__(self):
        for batch in self._loader:
            fault_point('train.batch')
            if self._name:
                fault_point(f'{self._name}.batch')
            yield batch

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


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
        if os.path.isdir(folder) and rank0:
            _logger.warning(f'{folder} holds no checkpoint (a run that stopped in its first epoch or failed): '
                            f'removed, starting afresh')
            shutil.rmtree(folder)
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
