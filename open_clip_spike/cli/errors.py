"""How every command turns an error it expects into one line on stderr and exit code 2.

``error_line`` words the errors of the machine rather than of the input the same for every command: a full disk
("no space left on device"), a folder that may not be written ("permission denied: PATH", "read-only file
system: PATH"), an output path under a regular file. The dispatcher (``spikeclip COMMAND``) catches what a
command lets through with ``USER_ERRORS``; each command's own ``except`` prints ``error_line(e)``.
"""
import errno
import os
import re
import sys
from typing import Optional

__all__ = ['USER_ERRORS', 'error_line', 'fail', 'io_error_line']

_TEXT_ERRNO = {errno.ENOSPC: ('No space left on device', 'errno = 28', 'os error 28'),
               errno.EACCES: ('Permission denied', 'errno = 13', 'os error 13'),
               errno.EROFS: ('Read-only file system', 'errno = 30', 'os error 30')}
_TEMP_RE = re.compile(r'^\.(?:(?P<name>.+)\.)?tmp-\d+-')  # timm_spike.utils.temp_prefix names


def _user_path(path: str) -> str:
    """The path the user chose for a temporary one of ``atomic_path`` or the Hub folder's write."""
    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        m = _TEMP_RE.match(part)
        if m is None:
            continue
        if m['name']:  # '.NAME.tmp-PID-...': the folder NAME being written
            return os.sep.join(parts[:i] + [m['name']] + parts[i + 1:])
        return os.sep.join(parts[:i]) or os.sep  # '.tmp-PID-....ext': a file in this folder
    return path

# Errors of the input or the machine: one line and exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)


def _file_above(path: str) -> Optional[str]:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    p = os.path.abspath(path)
    parts = []
    while p and p != os.path.dirname(p):
        parts.append(p)
        p = os.path.dirname(p)
    for q in reversed(parts):
        if os.path.lexists(q) and not os.path.isdir(q):
            return q
        if not os.path.lexists(q):
            return None
    return None


def io_error_line(e: BaseException) -> Optional[str]:
    """One line for an ``OSError`` of the machine (full disk, no permission, read-only, a file where a folder
    goes), or None for any other error."""
    if not isinstance(e, OSError):
        return None
    code, path = e.errno, e.filename
    if code is None:  # h5py and other C libraries put errno in the text only
        text = str(e)
        code = next((c for c, marks in _TEXT_ERRNO.items() if any(m in text for m in marks)), None)
    if path is not None:
        path = _user_path(str(path))
    where = f': {path}' if path is not None else ''
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = 'no space left on device' if code == errno.ENOSPC else 'disk quota exceeded'
        return (f'{what}{" while writing " + str(path) if path is not None else ""}: free some space or write '
                f'the output elsewhere')
    if code in (errno.EACCES, errno.EPERM):
        return f'permission denied{where}: choose a folder you may write, or change its permissions'
    if code == errno.EROFS:
        return f'read-only file system{where}: write the output to a writable folder'
    if code in (errno.EEXIST, errno.ENOTDIR) and path is not None:
        blocker = _file_above(str(path))
        if blocker is not None:
            return f'{blocker} is a file, not a folder: choose an output path whose folders are folders'
    return None


def error_line(e: BaseException) -> str:
    """The one line a command prints for an expected error."""
    line = io_error_line(e)
    if line is not None:
        return line
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if 'Original Traceback (most recent call last):' in lines:  # re-raised from a DataLoader worker
        return lines[-1]
    return ' '.join(lines)


def fail(prog: str, e: BaseException) -> int:
    """Print ``PROG: error: <one line>`` to stderr; return 2 (the exit code of bad input)."""
    print(f'{prog}: error: {error_line(e)}', file=sys.stderr)
    return 2
