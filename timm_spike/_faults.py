"""Fault injection for the tests (tests/faults): a process kills or interrupts itself at a named point.

Not part of the library's API: the code that writes files or runs long loops marks its crash points with
``fault_point(name)``, which costs a dictionary lookup unless ``$SPIKECLIP_FAULT`` names that point.
"""
import logging
import os
import re
import signal
from typing import Dict, Optional, Tuple

__all__ = ['FAULT_ENV', 'fault_point']

_logger = logging.getLogger(__name__)

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
    sends it), or KILLGROUP / INTGROUP (to its whole
    process group, as a terminal does). Without the variable this is a dictionary lookup.
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
