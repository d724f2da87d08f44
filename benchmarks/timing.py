"""Timers: CUDA events through ``triton.testing.do_bench`` on a GPU, the host clock on CPU.

Both return a :class:`Timing` (median and inter-quartile range in milliseconds). Callers warm
up first (Triton JIT and torch.compile compile on the first call of each specialisation).
"""

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    ms_median: float
    ms_iqr: float
    reps: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_timing(fn, device: torch.device, reps: int) -> Timing:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return _summarise(times)


def _summarise(times: list[float]) -> Timing:
    if len(times) < 2:
        return Timing(times[0], 0.0, len(times))
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Timing(statistics.median(times), q3 - q1, len(times))


def measure(fn, device: torch.device, *, warmup_ms: float = 10, rep_ms: float = 60, cpu_reps: int = 3):
    """Time a short op. On CUDA do_bench flushes L2 before every repetition and times with events."""
    if device.type != "cuda":
        return _host_timing(fn, device, cpu_reps)
    from triton.testing import do_bench

    q1, med, q3 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.25, 0.5, 0.75])
    return Timing(med, q3 - q1, max(1, int(rep_ms / max(med, 1e-3))))


def measure_steps(fn, device: torch.device, *, warmup: int = 3, iters: int = 8) -> Timing:
    """Time a long step (a training iteration) with one event pair per step, after ``warmup`` steps."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return _host_timing(fn, device, iters)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    torch.cuda.synchronize(device)
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return _summarise([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def peak_memory(fn, device: torch.device) -> tuple[int | None, int | None]:
    """(bytes allocated at the peak of one ``fn()`` above what was allocated before it, absolute peak).

    (None, None) off CUDA, where PyTorch keeps no allocator statistics.
    """
    if device.type != "cuda":
        fn()
        return None, None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak - base, peak
