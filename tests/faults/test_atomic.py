"""Crash-safe writes (timm_spike.utils): temporary files of killed writers are removed, those of live ones kept;
written files get normal permissions; the fault hook (timm_spike._faults) fires where and when it is told."""
import os
import signal
import subprocess
import sys

import pytest

from timm_spike import _faults
from timm_spike._faults import fault_point
from timm_spike.utils import atomic_path, atomic_write, remove_stale_temps


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed(tmp_path, fault_log):
    fault_log.tried('temporary files of a killed writer', 'atomic_write (every file the project writes)')
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f'.tmp-{dead}-abc.png').write_bytes(b'half a png')
    (tmp_path / f'.hub.tmp-{dead}-xyz').mkdir()
    (tmp_path / f'.tmp-{alive}-def.json').write_text('{')  # a live process is still writing it
    (tmp_path / '.tmp-notapid.txt').write_text('not ours')
    atomic_write(str(tmp_path / 'summary.json'), b'{}')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f'.tmp-{alive}-def.json', '.tmp-notapid.txt', 'summary.json'])
    assert remove_stale_temps(str(tmp_path), force=True) == 0
    fault_log.survived()


def test_written_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / 'a.bin'), b'x')
        with atomic_path(str(tmp_path / 'b.bin')) as tmp:
            open(tmp, 'wb').close()
    finally:
        os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {'0o644'}


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / 'energy.json'
    target.write_text('old')
    monkeypatch.setenv(_faults.FAULT_ENV, 'atomic:energy.json:INT')
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), b'new')
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['energy.json']


def test_fault_point_spec(monkeypatch):
    monkeypatch.setattr(_faults, '_fault_hits', {})
    monkeypatch.setenv(_faults.FAULT_ENV, 'p@3:INT')
    fault_point('p')
    fault_point('other')
    fault_point('p')
    with pytest.raises(KeyboardInterrupt):
        fault_point('p')  # the third hit of 'p'
    monkeypatch.setenv(_faults.FAULT_ENV, 'p:BOOM')
    with pytest.raises(ValueError, match=r'POINT\[@N\]\[:KILL\|INT\|KILLGROUP\|INTGROUP\]'):
        fault_point('p')
    assert signal.SIGKILL == _faults._SIGNALS['KILL']
