"""What keeps a training run safe on a shared machine or a cluster: one run per folder, preemption, checkpoints
between epochs.

- **One run per folder.** A run holds `open_clip_spike.locking.FolderLock` on ``<logs>/<name>`` while it lives
  (rank 0 only); a second run on the same name is refused at once, naming the process that holds it. The kernel
  drops the lock when the process dies, so a killed run never blocks its rerun.
- **Preemption.** SIGTERM (what SLURM and Kubernetes send first) and SIGUSR1 (what ``#SBATCH --signal=USR1@...``
  sends) set a flag; at the next step boundary the run writes a mid-epoch checkpoint and stops with
  `Preempted`, which the command turns into one line and exit code ``PREEMPTED_EXIT`` (75, ``EX_TEMPFAIL``:
  "try again"). A second signal ends the process at once (the default action).
- **Step checkpoints.** ``--spike-save-every-steps N`` / ``--spike-save-every-minutes M`` write the same mid-epoch
  checkpoint every N optimizer steps / M minutes (``checkpoints/step_latest.pt``; the next epoch checkpoint
  replaces it).
- **Exact mid-epoch resume.** The mid-epoch checkpoint holds the random state the epoch started from and the one
  at the boundary (`open_clip_spike.train.resume`). The resumed run restarts the epoch from its start state, so
  the data order is drawn again identically, reads and drops the batches already trained on (the data loader's own
  random draws, e.g. augmentation, happen as before), restores the boundary state and trains on: the weights,
  the losses and the records equal an uninterrupted run's. open_clip_train numbers the steps of an epoch with
  ``enumerate``; `step_enumerate` (a patch) starts that count at the resumed step, so its learning-rate schedule
  and its logs go on where they stopped.
"""
import builtins
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

import torch

from open_clip_spike.locking import FolderInUseError, FolderLock
from timm_spike._faults import fault_point

__all__ = ['PREEMPTED_EXIT', 'Preempted', 'PreemptionHandler', 'RunFolderError', 'StepLoader', 'StepPolicy',
           'hold_run_folder', 'step_enumerate']

_logger = logging.getLogger(__name__)

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a checkpoint was written on a preemption signal; rerun to continue
PREEMPTION_SIGNALS = ('SIGTERM', 'SIGUSR1')


class RunFolderError(ValueError):
    """The run folder cannot be used (held by another run, not writable); the message says what to do."""


class Preempted(Exception):
    """Raised at a step boundary after a preemption signal, once the checkpoint is written."""

    def __init__(self, signame: str, checkpoint: Optional[str], epoch: int, step: int):
        self.signame, self.checkpoint, self.epoch, self.step = signame, checkpoint, epoch, step
        where = f'checkpoint {checkpoint} written at epoch {epoch + 1}, step {step}' if checkpoint else \
            'no checkpoint written (the run keeps no logs)'
        super().__init__(f'preempted ({signame}): {where}; rerun the same command to continue')


# ---------------------------------------------------------------------------------------------------------------
# One run per folder

def hold_run_folder(folder: str, what: str) -> Optional[FolderLock]:
    """Lock ``folder`` for this run (rank 0; other ranks return None); `RunFolderError` when another process holds
    it or the folder cannot be written."""
    if os.environ.get('RANK', '0') != '0':
        return None
    try:
        return FolderLock(folder, what).acquire()
    except FolderInUseError as e:
        raise RunFolderError(f'{e}; pick another --name') from None
    except PermissionError:
        raise RunFolderError(f'permission denied: {os.path.dirname(os.path.abspath(folder))} (the run writes '
                             f'{folder}); choose a folder you can write with --logs / --spike-logs') from None
    except OSError as e:
        raise RunFolderError(f'cannot create the run folder {folder}: {e.strerror or e}') from None


# ---------------------------------------------------------------------------------------------------------------
# Preemption signals

class PreemptionHandler:
    """While active (a context), SIGTERM and SIGUSR1 set `signame` instead of ending the process; a second signal
    ends it with the default action. Outside the main thread (where Python cannot install handlers) it is inert."""

    def __init__(self):
        self.signame: Optional[str] = None
        self._saved = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signame is not None:  # the second signal: stop now
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.signame = name
        _logger.warning(f'{name} received: writing a checkpoint at the next step boundary, then stopping')

    def _restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}

    def __enter__(self) -> 'PreemptionHandler':
        if threading.current_thread() is threading.main_thread():
            for name in PREEMPTION_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


# ---------------------------------------------------------------------------------------------------------------
# Step boundaries

class StepPolicy:
    """When to write a mid-epoch checkpoint: every ``every_steps`` optimizer steps, every ``every_minutes``
    minutes, and on a preemption signal (``handler``)."""

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0,
                 handler: Optional[PreemptionHandler] = None):
        self.every_steps = int(every_steps or 0)
        self.every_seconds = float(every_minutes or 0) * 60
        self.handler = handler
        self.last_save = time.monotonic()

    @property
    def active(self) -> bool:
        return bool(self.every_steps or self.every_seconds or self.handler is not None)

    def decide(self, global_step: int, first: bool) -> tuple:
        """(save, preempted) at the boundary before optimizer step ``global_step`` (0-based, over the whole run);
        ``first``: the boundary the epoch (or a resumed run) starts at, where a periodic save would repeat the
        checkpoint it starts from. In a distributed run the ranks' decisions are combined (any rank's signal or
        clock stops all), so that every rank stops at the same step."""
        preempted = self.handler is not None and self.handler.signame is not None
        periodic = not first and (
            (self.every_steps and global_step % self.every_steps == 0)
            or (self.every_seconds and time.monotonic() - self.last_save >= self.every_seconds))
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            device = torch.device('cuda', torch.cuda.current_device()) \
                if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')  # NCCL reduces on the GPU
            flags = torch.tensor([int(preempted), int(bool(periodic))], dtype=torch.int32, device=device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            preempted, periodic = bool(flags[0]), bool(flags[1])
        return bool(periodic) or preempted, preempted

    def saved(self) -> None:
        self.last_save = time.monotonic()


class StepLoader:
    """open_clip_train's training data loader seen through the step boundaries of one epoch.

    Before each batch is read, ``boundary(i)`` runs (i: the 0-based index of the batch about to be trained on; it
    may write a checkpoint and raise `Preempted`). ``start`` batches are read and dropped first (a resumed epoch),
    then ``start_rng`` is restored. ``check_batch(batch)`` sees every batch (False: the batch is dropped; it may
    raise to stop the run). Every batch passes ``fault_point('train.batch')`` and
    ``fault_point('<run name>.batch')`` (no-ops outside the fault tests).
    """

    def __init__(self, loader: Any, name: Optional[str] = None, start: int = 0,
                 start_rng: Optional[dict] = None, boundary: Optional[Callable[[int], None]] = None,
                 set_rng: Optional[Callable[[dict], None]] = None,
                 check_batch: Optional[Callable[[Any], bool]] = None):
        self._loader = loader
        self._name = name
        self.start = int(start)
        self._start_rng = start_rng
        self._boundary = boundary
        self._set_rng = set_rng
        self._check_batch = check_batch

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._loader)
        for _ in range(self.start):
            next(it)
        if self._start_rng is not None and self._set_rng is not None:
            self._set_rng(self._start_rng)
        i = self.start
        while True:
            if self._boundary is not None and i < self.num_batches:
                self._boundary(i)
            try:
                batch = next(it)
            except StopIteration:
                return
            fault_point('train.batch')
            if self._name:
                fault_point(f'{self._name}.batch')
            if self._check_batch is not None and not self._check_batch(batch):
                continue  # no readable sample in it
            yield batch
            i += 1

    @property
    def num_batches(self) -> int:
        n = getattr(self._loader, 'num_batches', None)
        return int(n) if n is not None else len(self._loader)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def step_enumerate(iterable: Any, start: int = 0):
    """``enumerate`` for open_clip_train's training loop: a resumed epoch's batches keep their step numbers."""
    if isinstance(iterable, StepLoader):
        return builtins.enumerate(iterable, start + iterable.start)
    return builtins.enumerate(iterable, start)
