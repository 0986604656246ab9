"""Run a training entry point (``open_clip_spike.train`` or ``.train.upstream``) in the calling process.

open_clip_train's ``main`` sets the root logger up for its run (a console handler on ``sys.stderr``, a file
handler on the run's ``out.log``, every logger's level): in a process that runs more than one training (the demo's
stages, a test session) those would pile up and each run would also log into the files of the earlier ones. Here
the caller's root handlers are set aside for the run, the run's own removed and closed after it, and levels
restored; the run's stdout and stderr (and so its console log) go to the given streams. Written by hand: neither
open_clip_train nor the standard library has a scoped ``main``.
"""
import contextlib
import gc
import importlib
import logging
from typing import List, Optional, TextIO

__all__ = ['ENTRY_POINTS', 'run_in_process']

# the module whose main(argv) each ``python -m`` entry point runs
ENTRY_POINTS = {'open_clip_spike.train': 'open_clip_spike.train.main',
                'open_clip_spike.train.upstream': 'open_clip_spike.train.upstream'}


@contextlib.contextmanager
def _scoped_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    for h in handlers:
        root.removeHandler(h)
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        for n, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(n, logging.NOTSET))


def run_in_process(entry: str, argv: List[str], stdout: TextIO, stderr: Optional[TextIO] = None) -> int:
    """``python -m ENTRY ARGV`` in this process: its exit code (130 after Ctrl-C, once the loop has shut down
    with whole checkpoints; 2 for a usage error), its output written to ``stdout`` / ``stderr`` (default: both
    to ``stdout``)."""
    if entry not in ENTRY_POINTS:
        raise ValueError(f'Unknown training entry point {entry!r}; choose one of {sorted(ENTRY_POINTS)}')
    main = importlib.import_module(ENTRY_POINTS[entry]).main
    try:
        with _scoped_logging(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr or stdout):
            rc = main(list(argv))
    except SystemExit as e:  # argparse inside open_clip_train
        rc = e.code if isinstance(e.code, int) else 2
    finally:
        gc.collect()  # the run's model, optimizer and loaders, before the caller builds the next
    return 0 if rc is None else int(rc)
