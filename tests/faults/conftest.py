"""Fault-injection suite: kill and interrupt ``spikeclip train`` and ``spikeclip demo`` at named points
(``timm_spike._faults.fault_point``), rerun, and compare with an uninterrupted run; feed bad input and check the error.

Every test here is marked ``faults`` (``pytest -m faults`` runs the suite alone). Each test records the faults it
tried and survived with the ``fault_log`` fixture; the session prints them as a table at the end.
"""
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # fault_helpers, for the test modules (pytest imports by path)

from fault_helpers import FIXTURES_TRAIN, NAMES, TEACHER, TEMPLATE  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'faults: fault-injection tests (kills, interrupts, corrupt files, bad input)')


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


FAULT_KEY = 'spikeclip_fault'  # the table is printed by tests/conftest.py (loaded by xdist's controller too)


class FaultLog:
    """Records one fault per call: what was done, and whether the run survived it (set by the test's asserts).

    The rows ride on the test's report (``user_properties``), so the table is complete under pytest-xdist too."""

    def __init__(self, node):
        self.node = node
        self.open: List[Dict[str, str]] = []

    def tried(self, fault: str, where: str) -> Dict[str, str]:
        row = dict(test=self.node.name, fault=fault, where=where, survived='no')
        self.node.user_properties.append((FAULT_KEY, row))
        self.open.append(row)
        return row

    def survived(self) -> None:
        """Mark every fault recorded so far by this test as survived (call after the test's checks)."""
        for row in self.open:
            row['survived'] = 'yes'
        self.open = []


@pytest.fixture
def fault_log(request) -> FaultLog:
    return FaultLog(request.node)


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


