"""Helpers of the fault-injection suite: run a command with a fault, recognise litter, compare weights."""
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

import forkrun  # tests/helpers/forkrun.py (the root conftest puts tests/helpers on the path)

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

    ``fork=True``: the process is a fork of this one (``forkrun.run_forked``), not a new interpreter."""
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', TIMM_SPIKE_LIF_IMPL='spikingjelly',
             **(env or {}))
    e.pop('SPIKECLIP_FAULT', None)
    if fault:
        e['SPIKECLIP_FAULT'] = fault
    if fork:
        return forkrun.run_forked(cmd, e, cwd or ROOT, timeout)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd or ROOT,
                          start_new_session=True)


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
