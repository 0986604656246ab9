"""Helpers of the fault-injection suite: run a command with a fault, recognise litter, compare weights."""
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).parents[2]
FIXTURES_TRAIN = ROOT / 'tests' / 'open_clip_spike' / 'train' / 'fixtures_train'
FASHION_MNIST = ROOT / 'tests' / 'fixtures' / 'fashion_mnist'
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
TEMPLATE = 'a photo of the digit {}.'
TEACHER = 'SpikeTest-Teacher48'


# ---------------------------------------------------------------------------------------------------------------
# Running commands

def run_cmd(cmd: List[str], fault: Optional[str] = None, timeout: float = 600, cwd: Optional[Path] = None,
            env: Optional[Dict[str, str]] = None, fork: bool = False) -> subprocess.CompletedProcess:
    """Run a command in its own process group (so a ``...GROUP`` fault hits only it), optionally with a fault.

    ``fork=True``: the process is a fork of this one (``run_forked``), not a new interpreter."""
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', TIMM_SPIKE_LIF_IMPL='spikingjelly',
             **(env or {}))
    e.pop('SPIKECLIP_FAULT', None)
    if fault:
        e['SPIKECLIP_FAULT'] = fault
    if fork:
        return run_forked(cmd, e, cwd or ROOT, timeout)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd or ROOT,
                          start_new_session=True)


def run_forked(cmd: List[str], env: Dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` (``python -m MODULE ARGS`` or ``python -c CODE ARGS``) in a forked child of this process: a real
    process in its own session, killed by the faults as a new interpreter would be, with ``env`` and ``cwd``, one
    torch thread per ``OMP_NUM_THREADS`` and the LIF implementation of ``$TIMM_SPIKE_LIF_IMPL``, without the 10-15 s
    of imports a new interpreter pays here (torch, torchvision, timm, open_clip). The module runs as ``python -m``
    runs it (runpy, ``__main__``). Written by hand: pytest-forked forks whole tests, not commands."""
    import tempfile
    import time
    assert cmd[0] == sys.executable and cmd[1] in ('-m', '-c'), cmd[:2]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.setsid()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, 'w', buffering=1, closefd=False)
                sys.stderr = open(2, 'w', buffering=1, closefd=False)
                code = _child(cmd, env, cwd)
            except SystemExit as ex:
                code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
            except KeyboardInterrupt:
                code = 128 + signal.SIGINT
            except BaseException:  # noqa: B902 - reported as a crashed interpreter would
                import traceback
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(cmd, timeout)
            time.sleep(0.05)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read().decode(errors='replace'),
                                           err.read().decode(errors='replace'))


def _child(cmd: List[str], env: Dict[str, str], cwd: Path) -> int:
    """The forked child's command: this process's state reset to what a new interpreter would have."""
    import logging
    import runpy
    import warnings

    from timm_spike import set_lif_impl
    from timm_spike import utils
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(int(env.get('OMP_NUM_THREADS', '1')))
    set_lif_impl(env.get('TIMM_SPIKE_LIF_IMPL', 'auto'))
    utils._fault_hits.clear()
    if env.get('PYTHONWARNINGS') == 'ignore':
        warnings.simplefilter('ignore')
    for h in list(logging.root.handlers):  # pytest's capture handlers
        logging.root.removeHandler(h)
    logging.root.setLevel(logging.WARNING)
    if cmd[1] == '-m':
        sys.argv = [cmd[2], *cmd[3:]]
        runpy.run_module(cmd[2], run_name='__main__', alter_sys=True)
    else:
        sys.argv = ['-c', *cmd[3:]]
        exec(compile(cmd[2], '<string>', 'exec'), {'__name__': '__main__'})
    return 0


def run_here(cmd: List[str]) -> subprocess.CompletedProcess:
    """A ``python -m open_clip_spike.train ...`` command (``train_cmd``) run in this process as ``run_cmd`` runs it
    (one thread, spikingjelly's neuron), without a fault: the uninterrupted references and the final reruns, whose
    interpreter start would cost more than their training. The faults themselves always hit a real process."""
    import io

    from open_clip_spike.train.inprocess import run_in_process
    from timm_spike.layers import LIF_IMPL_ENV, lif_impl
    assert cmd[:3] == [sys.executable, '-m', 'open_clip_spike.train'], cmd[:3]
    out, err = io.StringIO(), io.StringIO()
    threads, env = torch.get_num_threads(), os.environ.get(LIF_IMPL_ENV)
    torch.set_num_threads(1)
    os.environ[LIF_IMPL_ENV] = 'spikingjelly'
    try:
        with lif_impl('spikingjelly'):
            rc = run_in_process('open_clip_spike.train', cmd[3:], out, err)
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop(LIF_IMPL_ENV, None)
        else:
            os.environ[LIF_IMPL_ENV] = env
    return subprocess.CompletedProcess(cmd, rc, out.getvalue(), err.getvalue())


def killed(proc: subprocess.CompletedProcess) -> bool:
    """The process died of the injected fault: SIGKILL, or SIGINT turned into exit code 130 / a signal."""
    return proc.returncode in (-signal.SIGKILL, -signal.SIGINT, 130, 2) or proc.returncode > 128


def litter(folder: Path) -> List[str]:
    """Temporary files and folders of interrupted writes, and files set aside, under ``folder``."""
    out = []
    for p in folder.rglob('*'):
        n = p.name
        if '.tmp-' in n or n.startswith('.tmp') or '.old.' in n or n.endswith(('.part', '.corrupt')) or n == 'tmp.pt':
            out.append(str(p.relative_to(folder)))
    return sorted(out)


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def assert_same_weights(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f'{len(diff)} of {len(a)} tensors differ, e.g. {diff[:3]}'


def train_cmd(root: Path, logs: Path, name: str, *extra: str) -> List[str]:
    """``spikeclip train`` stage 1 on the 12 digits: 3 steps per epoch."""
    return [sys.executable, '-m', 'open_clip_spike.train', '--spike-model-config', str(FIXTURES_TRAIN),
            '--model', 'SpikeCLIP-Tiny', '--distill-model', TEACHER,
            '--distill-pretrained', str(root / f'{TEACHER}.safetensors'),
            '--train-data', str(root / 'train.csv'), '--dataset-type', 'csv', '--csv-img-key', 'filepath',
            '--csv-caption-key', 'title', '--batch-size', '4', '--workers', '0', '--device', 'cpu',
            '--precision', 'fp32', '--lr', '5e-3', '--warmup', '1', '--log-every-n-steps', '1', '--report-to', 'none',
            '--seed', '0', '--spike-logs', str(logs), '--name', name, *extra]
