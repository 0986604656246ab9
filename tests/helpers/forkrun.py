"""Run Python commands in forks of the test process instead of new interpreters.

A new interpreter costs 10-15 s of imports on this project's 2-core machine (torch, torchvision, timm, open_clip),
more than most commands a test runs. A fork of the test process has them imported already; its child resets what
a new interpreter would start with (environment, working folder, thread count, LIF implementation, logging,
warnings) and runs the command's module as ``python -m`` runs it (``runpy``, ``__main__``).

- ``run_forked(cmd, env, cwd, timeout)``: one ``python -m MODULE ...`` / ``python -c CODE ...`` command.
- ``run_script(cmd, env, cwd, timeout)``: a script (the shell recipes) whose ``$PYTHON`` is a small stand-in
  interpreter: its ``-m`` / ``-c`` commands run in forks of this process (the stand-in hands them its stdin,
  stdout and stderr and exits with the fork's status); anything else goes to the real interpreter.

Written by hand: pytest-forked forks whole tests, not commands, and no forkserver library takes a command line.
Every test that runs commands this way is still paired with commands that start a real interpreter (the first
kill of each fault chain, the recipes' refusal and dry-run tests), so a missing import in a fresh process fails.
"""
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch


def run_forked(cmd: List[str], env: Dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` (``python -m MODULE ARGS`` or ``python -c CODE ARGS``) in a forked child of this process: a real
    process in its own session, killed by signals as a new interpreter would be, with ``env`` and ``cwd``; its
    output is captured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, 'rb') as null:
        pid = _fork_command(cmd, env, cwd, (null.fileno(), out.fileno(), err.fileno()))
        rc = _wait(pid, time.monotonic() + timeout, cmd, timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read().decode(errors='replace'),
                                           err.read().decode(errors='replace'))


def run_script(cmd: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` (e.g. ``['bash', 'recipe.sh', ...]``) with ``$PYTHON`` set to a stand-in interpreter whose
    ``-m`` / ``-c`` commands run in forks of this process, one after another; output captured as text."""
    folder = Path(tempfile.mkdtemp(prefix='pyshim'))  # short: AF_UNIX paths are limited to ~100 bytes
    sock_path = folder / 's'
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(sock_path))
        server.listen(4)
        shim = folder / 'python'
        shim.write_text(_SHIM.format(python=sys.executable, sock=str(sock_path)))
        shim.chmod(0o755)
        deadline = time.monotonic() + timeout
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(list(map(str, cmd)), env=dict(env, PYTHON=str(shim)), cwd=cwd, stdout=out,
                                    stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(server, selectors.EVENT_READ)
                    while proc.poll() is None:
                        if time.monotonic() > deadline:
                            raise subprocess.TimeoutExpired(cmd, timeout)
                        if sel.select(timeout=0.05):
                            conn, _ = server.accept()
                            with conn:
                                _serve(conn, deadline, timeout)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(errors='replace'),
                                               err.read().decode(errors='replace'))
    finally:
        server.close()
        for p in (sock_path, folder / 'python'):
            p.unlink(missing_ok=True)
        folder.rmdir()


# The stand-in interpreter: started with -I -S it imports nothing beyond these stdlib modules (~20 ms).
_SHIM = '''#!{python} -IS
import json, os, socket, struct, sys
args = sys.argv[1:]
if len(args) < 2 or args[0] not in ('-m', '-c'):
    os.execv({python!r}, [{python!r}, *args])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock!r})
msg = json.dumps(dict(cmd=[{python!r}, *args], env=dict(os.environ), cwd=os.getcwd())).encode()
socket.send_fds(s, [struct.pack('!I', len(msg)) + msg], [0, 1, 2])
status = b''
while len(status) < 4:
    chunk = s.recv(4 - len(status))
    if not chunk:
        sys.exit(255)
    status += chunk
rc = struct.unpack('!i', status)[0]
if rc < 0:
    os.kill(os.getpid(), -rc)
sys.exit(rc)
'''


def _serve(conn: socket.socket, deadline: float, timeout: float) -> None:
    """One stand-in call: receive its command and stdio, run it in a fork, send back the exit status (the script's
    ``timeout`` and its ``deadline`` bound the fork too)."""
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    try:
        head += _recv_exactly(conn, 4 - len(head))
        req = json.loads(_recv_exactly(conn, struct.unpack('!I', head)[0]))
        pid = _fork_command(req['cmd'], req['env'], Path(req['cwd']), tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)
    rc = _wait(pid, deadline, req['cmd'], timeout, conn)
    conn.sendall(struct.pack('!i', rc))


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b''
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError('the stand-in interpreter went away mid-request')
        data += chunk
    return data


def _fork_command(cmd: List[str], env: Dict[str, str], cwd: Path, stdio: Sequence[int]) -> int:
    """Fork; the child runs ``cmd`` with ``stdio`` as its fds 0, 1, 2 and never returns into pytest."""
    assert cmd[0] == sys.executable and cmd[1] in ('-m', '-c'), cmd[:2]
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        sys.stdin = open(0, 'r', closefd=False)
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


def _wait(pid: int, deadline: float, cmd: Sequence[str], timeout: float,
          peer: Optional[socket.socket] = None) -> int:
    """Wait for the forked command; kill its process group past the deadline (``subprocess.TimeoutExpired`` with
    ``timeout``) or when ``peer`` (the stand-in interpreter's connection) closes. Returns the exit status as
    ``subprocess`` gives it (-N: killed by signal N)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        gone = peer is not None and _closed(peer)
        if gone or time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if gone:
                return -signal.SIGKILL
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(0.05)


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b''
    except BlockingIOError:
        return False


def _child(cmd: List[str], env: Dict[str, str], cwd: Path) -> int:
    """The forked child's command: this process's state reset to what a new interpreter would have."""
    import logging
    import runpy
    import warnings

    from timm_spike import set_lif_impl
    from timm_spike import _faults
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(int(env.get('OMP_NUM_THREADS', '1')))
    set_lif_impl(env.get('TIMM_SPIKE_LIF_IMPL', 'auto'))
    _faults._fault_hits.clear()
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
