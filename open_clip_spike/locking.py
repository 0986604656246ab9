"""One process per folder: an advisory lock held on a folder while a run writes into it.

``fcntl.flock`` on a lock file inside the folder: the kernel releases it when the process ends, however it ends
(a killed run never blocks its rerun), and a second process that asks for it is refused at once with the pid of
the holder, which the lock file records. Used by the training runs, the demo's output folder and the
teacher-feature cache; it lives in the library because the cache needs it and the library imports nothing above
it. POSIX only (where ``fcntl`` is missing the lock is a no-op).
"""
import contextlib
import os
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover -- Windows
    fcntl = None

__all__ = ['LOCK_NAME', 'FolderInUseError', 'FolderLock', 'locked_folder']

LOCK_NAME = '.spikeclip.lock'


class FolderInUseError(RuntimeError):
    """Another live process holds the folder; the message names it and the process."""

    def __init__(self, folder: str, pid: Optional[int], what: str):
        self.folder, self.pid = folder, pid
        holder = f'process {pid}' if pid else 'another process'
        super().__init__(f'{folder} is in use by {holder} (another {what} on the same folder); wait for it to end '
                         f'or use another folder')


class FolderLock:
    """The lock of one folder (created if missing); `acquire` raises `FolderInUseError` when another process
    holds it. Re-entrant within a process only through the same object."""

    def __init__(self, folder: str, what: str = 'run'):
        self.folder = os.path.abspath(folder)
        self.what = what
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> 'FolderLock':
        if self._fd is not None or fcntl is None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                text = os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
            finally:
                os.close(fd)
            raise FolderInUseError(self.folder, int(text) if text.isdigit() else None, self.what) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked_folder(folder: str, what: str = 'run') -> Iterator[FolderLock]:
    """``with locked_folder(path, 'spikeclip demo'):`` the folder is this process's until the block ends."""
    with FolderLock(folder, what) as lock:
        yield lock
