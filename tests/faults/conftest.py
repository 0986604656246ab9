"""Fault-injection suite: kill and interrupt ``spikeclip train`` and ``spikeclip demo`` at named points
(``timm_spike.utils.fault_point``), rerun, and compare with an uninterrupted run; feed bad input and check the error.

Every test here is marked ``faults`` (``pytest -m faults`` runs the suite alone). Each test records the faults it
tried and survived with the ``fault_log`` fixture; the session prints them as a table at the end.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parents[2]
FIXTURES_TRAIN = ROOT / 'tests' / 'open_clip_spike' / 'train' / 'fixtures_train'
FASHION_MNIST = ROOT / 'tests' / 'fixtures' / 'fashion_mnist'
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
TEMPLATE = 'a photo of the digit {}.'
TEACHER = 'SpikeTest-Teacher48'

_RESULTS: List[Dict[str, str]] = []


def pytest_configure(config):
    config.addinivalue_line('markers', 'faults: fault-injection tests (kills, interrupts, corrupt files, bad input)')


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


class FaultLog:
    """Records one fault per call: what was done, and whether the run survived it (set by the test's asserts)."""

    def __init__(self, test: str):
        self.test = test
        self.open: List[Dict[str, str]] = []

    def tried(self, fault: str, where: str) -> Dict[str, str]:
        row = dict(test=self.test, fault=fault, where=where, survived='no')
        _RESULTS.append(row)
        self.open.append(row)
        return row

    def survived(self) -> None:
        """Mark every fault recorded so far by this test as survived (call after the test's checks)."""
        for row in self.open:
            row['survived'] = 'yes'
        self.open = []


@pytest.fixture
def fault_log(request) -> FaultLog:
    return FaultLog(request.node.name)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section('faults tried / survived')
    w = max(len(r['fault']) for r in _RESULTS)
    v = max(len(r['where']) for r in _RESULTS)
    for r in _RESULTS:
        tr.write_line(f"{r['fault']:<{w}}  {r['where']:<{v}}  {r['survived']}")
    n_ok = sum(r['survived'] == 'yes' for r in _RESULTS)
    tr.write_line(f'faults tried: {len(_RESULTS)}, survived: {n_ok}')


# ---------------------------------------------------------------------------------------------------------------
# Running commands

def run_cmd(cmd: List[str], fault: Optional[str] = None, timeout: float = 600, cwd: Optional[Path] = None,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group (so a ``...GROUP`` fault hits only it), optionally with a fault."""
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', TIMM_SPIKE_LIF_IMPL='spikingjelly',
             **(env or {}))
    e.pop('SPIKECLIP_FAULT', None)
    if fault:
        e['SPIKECLIP_FAULT'] = fault
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd or ROOT,
                          start_new_session=True)


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


# ---------------------------------------------------------------------------------------------------------------
# Data: real digits as PNG, a tiny teacher checkpoint

@pytest.fixture(scope='session')
def digits(tmp_path_factory) -> Path:
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    import open_clip_spike  # noqa: F401
    root = tmp_path_factory.mktemp('fault-digits')
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.images))
    (root / 'img').mkdir()
    rows = []
    for i in order[:12]:
        path = root / 'img' / f'{i}.png'
        img = Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        img.convert('RGB').save(path)
        rows.append(f'{path}\t{TEMPLATE.format(NAMES[d.target[i]])}\n')
    (root / 'train.csv').write_text('filepath\ttitle\n' + ''.join(rows))
    open_clip.add_model_config(FIXTURES_TRAIN)
    torch.manual_seed(0)
    sd = open_clip.create_model(TEACHER).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, root / f'{TEACHER}.safetensors')
    return root


def train_cmd(root: Path, logs: Path, name: str, *extra: str) -> List[str]:
    """``spikeclip train`` stage 1 on the 12 digits: 3 steps per epoch."""
    return [sys.executable, '-m', 'open_clip_spike.train', '--spike-model-config', str(FIXTURES_TRAIN),
            '--model', 'SpikeCLIP-Tiny', '--distill-model', TEACHER,
            '--distill-pretrained', str(root / f'{TEACHER}.safetensors'),
            '--train-data', str(root / 'train.csv'), '--dataset-type', 'csv', '--csv-img-key', 'filepath',
            '--csv-caption-key', 'title', '--batch-size', '4', '--workers', '0', '--device', 'cpu',
            '--precision', 'fp32', '--lr', '5e-3', '--warmup', '1', '--log-every-n-steps', '1', '--report-to', 'none',
            '--seed', '0', '--spike-logs', str(logs), '--name', name, *extra]
