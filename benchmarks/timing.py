"""Timers. Every figure is milliseconds per call (or per training step), kept with its raw samples.

Two modes answer two questions, and a profiler pass says why:

    eager       host-inclusive wall time, as a training loop sees it: calls back to back with no
                synchronisation between them, timed by CUDA events (the host clock on CPU). When
                the host takes longer to issue a call than the device to run it, this is host time.
    cuda_graph  device time: one call per input set, all sets captured in sequence into one CUDA
                graph (together several times the L2, so nothing is served from it), replayed;
                ms per call = replay time / number of sets. Without CUDA the same body runs
                uncaptured (``captured`` False): the code path is exercised, the figure is host time.
    profile     ``torch.profiler`` over a few steps, each alone on the device: kernel-busy time,
                host enqueue time and the ops that spend it, so a record says whether it is host-bound.

Providers are compared in interleaved rounds (:func:`interleave`: round robin, the first provider
rotating), so that drift of a shared machine falls on all of them alike. ``measure`` is
``triton.testing.do_bench`` (events after an L2 flush), the timer of ``benchmarks.tune``.
"""

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

MODES = ("eager", "cuda_graph")
# The record_function name that marks one profiled step.
STEP_MARK = "bench_step"
# Passes of a body on the capture stream before it is captured (PyTorch's examples use 3 with DDP).
GRAPH_WARMUP = 2
# At most this many calls in one sample (a fast call with a long target would take forever on a CPU).
MAX_CALLS = 256


@dataclass(frozen=True)
class Sampling:
    """How a case is sampled: ``warmup`` untimed passes over the input sets first; ``rounds``
    interleaved rounds, in each ``samples`` samples per provider in eager mode and ``graph_samples``
    in cuda_graph mode, each sample as many calls as take about ``sample_ms`` (a multiple of the
    input sets; one call when 0); ``profile_steps`` profiled steps per provider."""

    rounds: int
    samples: int = 1
    graph_samples: int = 1
    sample_ms: float = 0.0
    profile_steps: int = 3
    warmup: int = 2


@dataclass(frozen=True)
class Timing:
    """Samples in milliseconds per call, grouped by the round that took them."""

    rounds_ms: tuple[tuple[float, ...], ...]

    @property
    def samples_ms(self) -> list[float]:
        return [s for r in self.rounds_ms for s in r]

    @property
    def reps(self) -> int:
        return len(self.samples_ms)

    @property
    def ms_median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def ms_iqr(self) -> float:
        samples = self.samples_ms
        if len(samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return q3 - q1

    @property
    def round_medians_ms(self) -> list[float]:
        return [statistics.median(r) for r in self.rounds_ms]

    def extra(self) -> dict:
        """The raw samples and the per-round view, as a result record's ``extra`` stores them."""
        medians = self.round_medians_ms
        return {
            "samples_ms": self.samples_ms,
            "rounds": len(self.rounds_ms),
            "round_medians_ms": medians,
            "min_round_median_ms": min(medians),
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_ms(fn, device: torch.device, samples: int, calls: int = 1, steps_per_call: int = 1) -> list[float]:
    """``samples`` figures of ms per step, each over ``calls`` back-to-back calls of ``fn`` (one call
    runs ``steps_per_call`` steps: a graph replay of several input sets).

    No synchronisation between calls or samples, only after the last: the device waits for a slow
    host inside the timed span, as in a training loop. CUDA events on a GPU, the host clock on CPU.
    """
    per = calls * steps_per_call
    if device.type != "cuda":
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / per)
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(samples)]
    for start, end in events:
        start.record()
        for _ in range(calls):
            fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / per for start, end in events]


def cycling(steps) -> Callable[[], object]:
    """A zero-argument callable running the next callable of ``steps`` on each call, round robin."""
    it = itertools.cycle(steps)
    return lambda: next(it)()


def steps_body(steps) -> Callable[[], None]:
    """One zero-argument callable running every callable of ``steps`` once, in order."""

    def body():
        for step in steps:
            step()

    return body


def calls_for(fn, device: torch.device, target_ms: float, multiple: int = 1, steps_per_call: int = 1) -> int:
    """How many calls of ``fn`` take about ``target_ms``: a multiple of ``multiple`` (the input
    sets, so that every sample covers each alike), at most :data:`MAX_CALLS`; one when ``target_ms``
    is 0 (smoke runs: the code path, not the figure)."""
    if target_ms <= 0:
        return 1
    est = statistics.median(sample_ms(fn, device, 3, multiple, steps_per_call)) * steps_per_call
    return multiple * max(1, min(MAX_CALLS // multiple, round(target_ms / (est * multiple))))


def interleave(samplers: dict, rounds: int) -> dict[str, Timing]:
    """Run ``samplers`` (name -> zero-argument callable returning a list of ms samples) round robin
    for ``rounds`` rounds, round r starting at the r-th name; returns each name's :class:`Timing`."""
    names = list(samplers)
    taken = {name: [] for name in names}
    for r in range(rounds if names else 0):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            taken[name].append(tuple(samplers[name]()))
    return {name: Timing(tuple(rs)) for name, rs in taken.items()}


def graph_replay(make_body, device: torch.device):
    """(replay, captured): ``make_body()`` returns the body to capture (one step per input set).

    On CUDA, ``make_body`` runs on a side stream, so that autograd graphs it builds (a backward
    timed alone) belong to that stream and their backward can be captured there too; the body is
    warmed up on it :data:`GRAPH_WARMUP` times (nothing may compile, plan or allocate lazily while
    capturing: Triton JIT, torch.compile, cuDNN, optimizer state), then captured into one CUDA graph
    on it; ``replay`` launches the graph on the current stream. Without CUDA ``replay`` is the body
    itself, unwarmed, and ``captured`` is False.
    """
    if device.type != "cuda":
        return make_body(), False
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        body = make_body()
        for _ in range(GRAPH_WARMUP):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        body()
    return graph.replay, True


def compare_eager(steps: dict, device: torch.device, sampling: Sampling) -> dict[str, Timing]:
    """Wall time per call of each provider (name -> its steps, one per input set, cycled), as a
    training loop sees it, in interleaved rounds."""
    runs = {name: cycling(provider_steps) for name, provider_steps in steps.items()}
    calls = {name: calls_for(runs[name], device, sampling.sample_ms, len(steps[name])) for name in runs}
    return interleave(
        {name: lambda name=name: sample_ms(runs[name], device, sampling.samples, calls[name]) for name in runs},
        sampling.rounds,
    )


def compare_graphs(make_bodies: dict, n_steps: int, device: torch.device, sampling: Sampling):
    """Device time per call of each provider (name -> ``make_body`` for :func:`graph_replay`, whose
    body runs ``n_steps`` steps, one per input set), replays in interleaved rounds.

    Returns (timings, captured, errors): a provider whose capture fails is left out of the timings
    and its error kept, so that it cannot cost the others their figures.
    """
    replays, errors, captured = {}, {}, False
    for name, make_body in make_bodies.items():
        try:
            replays[name], captured = graph_replay(make_body, device)
        except Exception as e:  # any failure of one provider's capture: recorded, the others go on
            errors[name] = f"{type(e).__name__}: {e}"
    calls = {name: calls_for(r, device, sampling.sample_ms, 1, n_steps) for name, r in replays.items()}
    timings = interleave(
        {
            name: lambda name=name: sample_ms(replays[name], device, sampling.graph_samples, calls[name], n_steps)
            for name in replays
        },
        sampling.rounds,
    )
    return timings, captured, errors


def _union_us(intervals) -> float:
    """Total length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_steps(fn, device: torch.device, steps: int = 3, top: int = 8) -> dict:
    """``torch.profiler`` over ``steps`` calls of ``fn``, each alone on the device (synchronised
    before and after), so host and device time of one step can be told apart:

        wall_ms           median time from a step's start to the end of its device work
        host_enqueue_ms   median host time from a step's start until ``fn`` returns (backward
                          included: it returns when every kernel is enqueued)
        kernel_busy_ms    device time with a kernel, copy or memset running, per step (None without CUDA)
        host_in_ops_ms    self CPU time of all profiled ops per step (the rest of the enqueue time
                          is Python between them)
        top_host_ops      the ``top`` ops by self CPU time: op, ms and calls per step
        host_bound        host_enqueue_ms > kernel_busy_ms: the device waits for the host (None without CUDA)

    The profiler records every op, so the host figures include its overhead: compare them with
    each other, not with the unprofiled step time.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    walls = []
    with profile(activities=activities) as prof:
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            with record_function(STEP_MARK):
                fn()
            sync(device)
            walls.append((time.perf_counter() - t0) * 1e3)
    events = prof.events()
    marks = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == STEP_MARK)
    ops: dict[str, list[float]] = {}
    kernels = []
    for e in events:
        start, end = e.time_range.start, e.time_range.end
        if e.device_type == DeviceType.CUDA:
            kernels.append((start, end))
        elif e.name != STEP_MARK and any(s <= start and end <= t for s, t in marks):
            # Inside a step's host span: the main thread's ops and autograd's backward thread alike.
            entry = ops.setdefault(e.name, [0.0, 0])
            entry[0] += e.self_cpu_time_total
            entry[1] += 1
    ranked = sorted(ops.items(), key=lambda kv: -kv[1][0])
    busy = _union_us(kernels) / 1e3 / steps if cuda else None
    host = statistics.median((t - s) / 1e3 for s, t in marks)
    return {
        "steps": steps,
        "wall_ms": statistics.median(walls),
        "host_enqueue_ms": host,
        "kernel_busy_ms": busy,
        "host_in_ops_ms": sum(us for us, _ in ops.values()) / 1e3 / steps,
        "top_host_ops": [
            {"op": name, "self_cpu_ms": us / 1e3 / steps, "calls": n / steps} for name, (us, n) in ranked[:top]
        ],
        "host_bound": None if busy is None else host > busy,
    }


def measure(fn, device: torch.device, *, warmup_ms: float = 10, rep_ms: float = 60, cpu_reps: int = 3) -> Timing:
    """``triton.testing.do_bench`` (events, L2 flushed before every repetition) on CUDA, one round of
    its quartiles; the host clock over ``cpu_reps`` calls elsewhere. The timer of ``benchmarks.tune``."""
    if device.type != "cuda":
        return Timing((tuple(sample_ms(fn, device, cpu_reps)),))
    from triton.testing import do_bench

    return Timing((tuple(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")),))


def peak_memory(fn, device: torch.device) -> tuple[int | None, int | None]:
    """(bytes allocated at the peak of one ``fn()`` above what was allocated before it, absolute peak).

    (None, None) off CUDA, where PyTorch keeps no allocator statistics (``fn`` is not called).
    """
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak - base, peak
