"""Small utilities shared by timm_spike and open_clip_spike: crash-safe file writes, fault injection for tests,
shape-only model builds."""
import ctypes
import logging
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Set, Tuple

import torch

__all__ = ['FAULT_ENV', 'ALLOCATOR_ENV', 'atomic_path', 'atomic_write', 'bf16_is_native', 'build_on_meta',
           'fault_point', 'remove_stale_temps', 'temp_prefix', 'tune_allocator']

_logger = logging.getLogger(__name__)

# Temporary files and folders are named '.tmp-<pid>-<random>...': a later run can tell those of a process that
# no longer exists (killed mid-write) from those of one still writing, and remove only the former.
_TEMP_RE = re.compile(r'^\.(?:.+\.)?tmp-(\d+)-')
_swept: Set[str] = set()


def temp_prefix(name: str = '') -> str:
    """Prefix of a temporary file or folder of this process (``.NAME.tmp-PID-``, or ``.tmp-PID-``)."""
    return f'.{name}.tmp-{os.getpid()}-' if name else f'.tmp-{os.getpid()}-'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str, force: bool = False) -> int:
    """Remove temporary files and folders (``temp_prefix`` names) left in ``folder`` by processes that are gone.

    Checked once per folder and process unless ``force``. Returns how many entries were removed.
    """
    import shutil
    folder = os.path.abspath(folder)
    if (folder in _swept and not force) or not os.path.isdir(folder):
        return 0
    _swept.add(folder)
    removed = 0
    for name in os.listdir(folder):
        m = _TEMP_RE.match(name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
            _logger.warning('removed %s, left by an interrupted write (process %s)', path, m.group(1))
        except FileNotFoundError:  # another process swept it first
            pass
    return removed


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder (same suffix) to write; rename it over ``path`` on success.

    Readers see the old file or the whole new one, never a half-written one; on an error the temporary file is
    removed and ``path`` is left as it was. A temporary file left by a killed process is removed by the next
    write into the same folder (``remove_stale_temps``). The file gets the permissions of a normally created
    one (``mkstemp`` makes 0600). ``fault_point('atomic:<file name>')`` fires between the write and the rename.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(), suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())
        fault_point(f'atomic:{os.path.basename(path)}')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, data: bytes):
    """Write bytes to ``path`` through a temporary file in the same folder, then rename over it."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------------------------
# Fault injection (tests/faults): a process kills or interrupts itself at a named point.

FAULT_ENV = 'SPIKECLIP_FAULT'
_fault_hits: Dict[str, int] = {}
_fault_spec: Tuple[Optional[str], Optional[Tuple[str, int, str]]] = (None, None)
_SIGNALS = {'KILL': signal.SIGKILL, 'INT': signal.SIGINT, 'TERM': signal.SIGTERM, 'USR1': signal.SIGUSR1}


def _parse_fault(spec: str) -> Tuple[str, int, str]:
    m = re.fullmatch(r'(?P<point>[^@]+?)(?:@(?P<n>\d+))?(?::(?P<how>[A-Z0-9]+))?', spec)
    if m is None or (m['how'] and m['how'].replace('GROUP', '') not in _SIGNALS):
        raise ValueError(f'${FAULT_ENV}={spec!r}: expected POINT[@N][:KILL|INT|KILLGROUP|INTGROUP] (or TERM, USR1)')
    return m['point'], int(m['n'] or 1), m['how'] or 'KILL'


def fault_point(name: str) -> None:
    """A named point where ``$SPIKECLIP_FAULT`` can make this process die, for the fault-injection tests.

    ``SPIKECLIP_FAULT=POINT[@N][:HOW]`` fires at the N-th time (default 1) this process reaches ``POINT``;
    HOW is KILL (SIGKILL to itself, the default), INT (SIGINT, as Ctrl-C), TERM or USR1 (a preemption, as SLURM
    sends it), or KILLGROUP / INTGROUP (to its whole process group, as a terminal does). Without the variable
    this is a dictionary lookup.
    """
    global _fault_spec
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    if _fault_spec[0] != spec:
        _fault_spec = (spec, _parse_fault(spec))
    point, n, how = _fault_spec[1]
    if name != point:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] != n:
        return
    sig = _SIGNALS[how.replace('GROUP', '')]
    _logger.warning('fault injection: %s at %s (hit %d)', how, name, n)
    if how.endswith('GROUP'):
        os.killpg(os.getpgid(0), sig)
    else:
        os.kill(os.getpid(), sig)  # SIGINT: KeyboardInterrupt at the next bytecode of the main thread


def bf16_is_native() -> bool:
    """True when bf16 autocast on this CPU runs on oneDNN's bf16 kernels (AVX-512 and newer), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the meta device, or on the CPU if the model's __init__ needs values.

    Dense MAC counts need shapes only, so a large teacher costs no memory or time on the meta device.
    """
    try:
        with torch.device('meta'):
            return build()
    except Exception:  # a model whose __init__ reads values; build it for real
        return build()


ALLOCATOR_ENV = 'TIMM_SPIKE_TUNE_ALLOCATOR'  # '0': leave glibc's allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_allocator_tuned: Optional[bool] = None


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing every large tensor back to the OS.

    glibc serves each allocation above its mmap threshold (32 MB at most) with a fresh ``mmap`` and unmaps it on
    free, so every step of a spiking network, whose activations are T times those of the same ANN, page-faults
    through all of them again (the kernel zeroes each new page). Serving them from the heap and not trimming it
    makes SpikeCLIP-Tiny's training step about 1.4x and its inference up to 2.4x faster on a 2-core CPU
    (docs/benchmarks.md); the price is that the process keeps its peak memory until it exits. PyTorch's CPU tuning
    guide gets the same with jemalloc or tcmalloc; this needs no preload. ``import timm_spike`` calls it (so every
    ``spikeclip`` command and every Python user of the models runs tuned); set ``TIMM_SPIKE_TUNE_ALLOCATOR=0``
    before the import to keep glibc's defaults. Returns True when the settings are in
    force (not glibc, or turned off: False). Written by hand: no library offers it.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get(ALLOCATOR_ENV, '1') in ('0', 'false', 'False'):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl and macOS have no mallopt of these)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _allocator_tuned = bool(ok)
    return _allocator_tuned
