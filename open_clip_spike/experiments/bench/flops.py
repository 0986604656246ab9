"""FLOPs of a call and the machine's dense GEMM rate (the limit a model's GFLOP/s is compared with)."""
import statistics
import time
from typing import Any, Callable, Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode


from .timing import _sync


def measure_gemm_peak(device: str = 'cpu', n: int = 4096, repeats: int = 5) -> Dict[str, Any]:
    """The machine's dense GEMM rate: GFLOP/s of an fp32 ``n x n x n`` matmul on the current torch threads.

    Args:
        device: Where to run it.
        n: Matrix size (4096: about 137 GFLOP per call, large enough for the BLAS to reach its peak).
        repeats: Timed calls after one untimed call; the median is the peak.

    Returns:
        dict(n, threads, gflops=[per call], median_gflops).
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    _sync(device)
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return dict(n=n, threads=torch.get_num_threads(), gflops=rates, median_gflops=statistics.median(rates))


def count_flops(fn: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """FLOPs of one call of ``fn`` by torch's ``FlopCounterMode`` (matmuls and convolutions, forward and backward).

    Returns:
        (total FLOPs, FLOPs per aten op).
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k).replace('aten.', ''): int(v) for k, v in counter.get_flop_counts().get('Global', {}).items()}
    return int(counter.get_total_flops()), per_op
