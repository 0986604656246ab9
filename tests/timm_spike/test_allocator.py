"""``timm_spike.utils.tune_allocator``: large tensors come from the heap, not from a fresh mmap each."""
import os
import platform
import subprocess
import sys

import pytest

# In a fresh interpreter started with TIMM_SPIKE_TUNE_ALLOCATOR=0: how much the heap grows for a 64 MB tensor with
# glibc's defaults (the import left them), then tuned. Prints: tuned at import?, heap growth (MB); tuned?, growth,
# tuned again?
PROBE = r'''
import os
import torch
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

off = utils.tune_allocator()  # what the import did: turned off by the environment
untouched = heap_growth_mb()
utils._allocator_tuned = None
del os.environ['TIMM_SPIKE_TUNE_ALLOCATOR']
ok = utils.tune_allocator()
print(off, untouched, ok, heap_growth_mb(), utils.tune_allocator())
'''


def _probe():
    e = dict(os.environ, TIMM_SPIKE_TUNE_ALLOCATOR='0')
    proc = subprocess.run([sys.executable, '-c', PROBE], capture_output=True, text=True, timeout=300, env=e)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(platform.system() != 'Linux' or not platform.libc_ver()[0] == 'glibc', reason='glibc only')
def test_large_tensors_come_from_the_heap_once_tuned():
    off, untouched, ok, tuned, again = _probe()
    # turned off by the environment: glibc's default, a mapping of its own for a 64 MB buffer, not the heap
    assert off == 'False' and int(untouched) < 32
    assert ok == 'True' and again == 'True'
    assert int(tuned) >= 48  # tuned: served from the heap


def test_import_runs_tuned():
    """``import timm_spike`` applies it (so every ``spikeclip`` command and every Python user runs tuned)."""
    import timm_spike  # noqa: F401
    from timm_spike import utils
    assert utils._allocator_tuned is (platform.libc_ver()[0] == 'glibc' and
                                      os.environ.get('TIMM_SPIKE_TUNE_ALLOCATOR', '1') != '0')
