"""``python -m open_clip_spike.train.upstream ARGS``: open_clip_train's own loop, model and losses (no SpikeCLIP
option), with exact resumption (``open_clip_spike.train.resume``), one run per folder and a checkpoint on preemption
(``open_clip_spike.train.safety``): the demo trains its ANN teacher with it.

Importing ``open_clip_spike`` registers this project's model configs; nothing else of the loop is changed.
"""
import logging
import os
import sys
from typing import List, Optional

import open_clip_spike  # noqa: F401  (registers the model configs with open_clip)

from .patches import patched_upstream_loop
from .resume import ResumeError, ResumeState, prepare_experiment
from .safety import PREEMPTED_EXIT, Preempted, PreemptionHandler, RunFolderError, StepPolicy, hold_run_folder

__all__ = ['main']

_logger = logging.getLogger(__name__)


def main(argv: Optional[List[str]] = None) -> int:
    """Run open_clip_train's ``main`` on ``argv``; rerunning the same command resumes it exactly."""
    from open_clip_train.main import main as open_clip_train_main
    from open_clip_train.params import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    lock, handler = None, PreemptionHandler()
    try:
        a = parse_args(argv)
        if a.epochs < 1:
            raise ResumeError(f'--epochs must be >= 1, got {a.epochs}')
        if a.name and a.logs and a.logs.lower() != 'none':
            lock = hold_run_folder(os.path.join(a.logs, a.name), 'open_clip_train run')
        run_argv = prepare_experiment(argv, argv, a.logs, a.name, a.resume)
        state = ResumeState()
        state.policy = StepPolicy(handler=handler)
        with handler, patched_upstream_loop(state):
            rc = open_clip_train_main(run_argv)
    except Preempted as e:
        print(f'open_clip_train: {e} (exit code {PREEMPTED_EXIT})', file=sys.stderr)
        return PREEMPTED_EXIT
    except (ResumeError, RunFolderError) as e:
        print(f'open_clip_train: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('open_clip_train: interrupted; rerun the same command to continue from the last checkpoint',
              file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
    return 0 if rc in (None, 0) else 1


if __name__ == '__main__':
    sys.exit(main())
