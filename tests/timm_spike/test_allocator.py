"""``timm_spike.utils.tune_allocator``: large tensors come from the heap, not from a fresh mmap each; importing
timm_spike leaves the allocator alone, the ``spikeclip`` commands tune it."""
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'

# In a fresh interpreter: how much the heap grows for a 64 MB tensor after ``import timm_spike`` (glibc's defaults
# left as they are), then after ``tune_allocator()``. Prints: tuned by the import?, heap growth (MB); tuned?, growth,
# tuned again?
PROBE = r'''
import torch
import timm_spike
from timm_spike import utils

def heap_growth_mb():
    def heap():
        for line in open('/proc/self/maps'):
            if line.rstrip().endswith('[heap]'):
                lo, hi = (int(v, 16) for v in line.split()[0].split('-'))
                return hi - lo
        return 0
    before = heap()
    x = torch.ones(64 << 20, dtype=torch.uint8)
    grown = (heap() - before) >> 20
    assert int(x.sum()) == 64 << 20
    return grown

by_import = utils._allocator_tuned is not None
untouched = heap_growth_mb()
ok = timm_spike.utils.tune_allocator()
print(by_import, untouched, ok, heap_growth_mb(), utils.tune_allocator())
'''

# ``spikeclip`` (open_clip_spike.cli.main) tunes it before running a command; TIMM_SPIKE_TUNE_ALLOCATOR=0 opts out.
CLI_PROBE = r'''
from open_clip_spike.cli import main
from timm_spike import utils
assert utils._allocator_tuned is None  # importing the command package changes nothing either
try:
    main(['info', '--help'])
except SystemExit:  # argparse's --help
    pass
print('TUNED', utils._allocator_tuned)
'''


def _run(code: str, **env):
    e = {k: v for k, v in os.environ.items() if k != 'TIMM_SPIKE_TUNE_ALLOCATOR'}
    e.update(env)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=e)
    return proc


@pytest.mark.skipif(not GLIBC, reason='glibc only')
def test_import_leaves_the_allocator_and_the_call_tunes_it():
    proc = _run(PROBE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_import, untouched, ok, tuned, again = proc.stdout.split()
    # after the import: glibc's default, a mapping of its own for a 64 MB buffer, not the heap
    assert by_import == 'False' and int(untouched) < 32
    assert ok == 'True' and again == 'True'
    assert int(tuned) >= 48  # tuned: served from the heap


@pytest.mark.skipif(not GLIBC, reason='glibc only')
@pytest.mark.parametrize('opt_out', [False, True])
def test_commands_run_tuned_unless_opted_out(opt_out):
    proc = _run(CLI_PROBE, **({'TIMM_SPIKE_TUNE_ALLOCATOR': '0'} if opt_out else {}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ['TUNED', str(not opt_out)]
