"""Timing and its statistics: interleaved rounds, the load of the machine, a distribution-free interval of the
median."""
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from timm_spike.layers.fused_lif import fused_compile_enabled


def _sync(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _cpu_busy_jiffies() -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where unavailable."""
    try:
        with open('/proc/stat') as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMonitor:
    """What else used the machine while a measurement ran: created at the start, ``result()`` at the end.

    The CPU time that other processes took during the run (from /proc/stat, minus this process and its waited-for
    children) decides ``under_load`` (over 5% of the CPUs). The 1-minute load average at the start is recorded
    but only decides where /proc/stat is unavailable: right after another run it still shows that run's tail.
    """

    def __init__(self):
        self.loadavg_before = os.getloadavg() if hasattr(os, 'getloadavg') else None
        self._busy0, self._own0, self._wall0 = _cpu_busy_jiffies(), _own_cpu_seconds(), time.time()

    def result(self) -> Dict[str, Any]:
        wall = time.time() - self._wall0
        busy1, own1 = _cpu_busy_jiffies(), _own_cpu_seconds()
        load = dict(loadavg_before=self.loadavg_before,
                    loadavg_after=os.getloadavg() if hasattr(os, 'getloadavg') else None)
        if self._busy0 and busy1:
            others = max(0.0, (busy1[0] - self._busy0[0]) / os.sysconf('SC_CLK_TCK') - (own1 - self._own0))
            load['other_processes_cpu_share'] = others / (max(wall, 1e-9) * (os.cpu_count() or 1))
        share = load.get('other_processes_cpu_share')
        if share is not None:
            load['under_load'] = share > 0.05
        else:
            load['under_load'] = bool(self.loadavg_before and self.loadavg_before[0] > 0.5)
        return load


def machine_info(threads: int, device: str) -> Dict[str, Any]:
    import importlib.metadata

    import timm
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), cpu)
    except OSError:
        pass
    info = dict(
        cpu=cpu, cpu_count=os.cpu_count(), torch_threads=threads, platform=platform.platform(),
        python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
        spikingjelly=importlib.metadata.version('spikingjelly'), device=device,  # the package has no __version__
        fused_compiled=fused_compile_enabled(),
    )
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


_PAGE_MB = (os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096) / 2 ** 20


def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched for the first time); 0 where unknown."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def _timed_rounds(calls: Dict[str, Callable[[], None]], repeats: int, warmup: int, device: str) -> Dict[str, Dict]:
    """Warm each call up, then time them interleaved; return first-call time and the median per key.

    The calls come smallest first (the ANN, then T ascending). A call right after a much bigger one is slower
    (measured on the 2-core CPU: a SpikeCLIP ANN step right after a T=8 step took 2.33 s against 2.06 s after
    another ANN step; the allocator hands freshly mapped memory back), so each round starts with one untimed
    call of the first variant: no timed call follows a bigger variant, which would bias the ANN baseline up and
    every overhead down.
    """
    out = {k: dict(first_s=None, times=[], faults_mb=[]) for k in calls}
    for k, fn in calls.items():
        for i in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i == 0:
                out[k]['first_s'] = time.perf_counter() - t0
    settle = next(iter(calls.values()))
    for _ in range(repeats):
        settle()
        _sync(device)
        for k, fn in calls.items():
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[k]['times'].append(time.perf_counter() - t0)
            out[k]['faults_mb'].append((_minor_faults() - f0) * _PAGE_MB)
    for v in out.values():
        v['median_s'] = statistics.median(v['times'])
        v['median_faults_mb'] = statistics.median(v['faults_mb'])
    return out


def median_interval(values: Sequence[float], level: float = 0.9) -> Tuple[float, float]:
    """A distribution-free interval that holds the median of ``values``' population with at least ``level``.

    The order statistics ``x_(k)`` and ``x_(n+1-k)`` for the largest k with ``P(Binomial(n, 1/2) < k) <=
    (1 - level) / 2`` (sign-test interval; no assumption on the distribution of the timings). Below 5 values
    no k reaches 90%: the range is returned, which then holds the median with less than ``level``.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError('median_interval needs at least one value')
    def at_most(j: int) -> float:  # P(Binomial(n, 1/2) <= j)
        return sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n

    k = 1
    while k < (n + 1) // 2 and at_most(k) <= (1 - level) / 2:
        k += 1
    return xs[k - 1], xs[n - k]
