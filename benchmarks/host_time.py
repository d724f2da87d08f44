"""Host time of each way into the fused gate: what Python costs per call, GPU or not.

    python -m benchmarks.host_time [--stub] [--out FILE.json] [--quick] [--budget-s S]

At maps under 56² the kernels take less time than the Python that launches them (NOTES.md,
run 3), so host time is a figure to track like GB/s. It is measured per call as the minimum
over many repeats of a batch of calls (interference only ever adds time). With ``--budget-s``
the batches are sized to end within S seconds: each measurement gets an equal share of the time
left, warm-up and compiles included, and fits its batches into it (:func:`plan_calls`); a slow
path (eager BAM, ~3 ms a call on the GPU host) gets fewer calls, never more time. The JSON file
is rewritten after every record, so a run stopped by its time guard keeps what it measured. Paths:

    fwd_nograd       bam_gate under no_grad (inference: no autograd node)
    fwd_grad         bam_gate recording its autograd node (an autograd.Function)
    bwd_autograd     torch.autograd.grad through that node, as a training step runs it
    bwd_launchers    kernels.gate_bwd called directly: the launchers' own cost
    floor_autograd   an autograd.Function that only allocates its outputs: what any
                     Python-defined op pays for its node and backward, our code aside

and for the whole module (on CUDA the host's cost; on CPU a smoke test, see module_calls), one
train-mode forward+backward of BAM(C) and of FusedBAM(C), and FusedBAM's check for its path:

    module_bam       eager BAM: the branches' nn.Modules through autograd, the reference gate
    module_fused     FusedBAM's one autograd node
    module_blocker   fused_path_blocker, which every FusedBAM call runs first

With no-op kernels (the three ``@triton.jit`` functions swapped out) only our Python and
torch's remain: the only mode without CUDA, where the kernels would run in the interpreter.
On CUDA it times both that and the real kernels on a tiny map, where the device never holds
the host back, so the difference is Triton's launcher; ``--stub`` keeps to the first.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys
import time

import torch

from bam_fused.common import interpret_without_cuda

interpret_without_cuda()  # the launchers accept CPU tensors only under the interpreter

PATHS = ("fwd_nograd", "fwd_grad", "bwd_autograd", "bwd_launchers", "floor_autograd")
MODULE_PATHS = ("module_bam", "module_fused", "module_blocker")
KERNELS = (
    ("gate_fwd", "gate_fwd_kernel"),
    ("gate_bwd", "gate_bwd_kernel"),
    ("gate_bwd", "gate_bwd_reduce_kernel"),
    ("pool_reduce", "pool_reduce_kernel"),
    ("channel_mlp", "channel_mlp_fwd_kernel"),
    ("channel_mlp", "channel_mlp_bwd_kernel"),
    ("input_grad", "input_grad_kernel"),
    ("input_grad", "input_grad_reduce_kernel"),
)


class _NoLaunch:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stub_kernels():
    """The launchers call no-ops instead of the Triton kernels, inside the ``with`` only."""
    saved = []
    for module_name, attr in KERNELS:
        module = importlib.import_module(f"bam_fused.kernels.{module_name}")
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, _NoLaunch())
    try:
        yield
    finally:
        for module, attr, kernel in saved:
            setattr(module, attr, kernel)


class _AllocOnly(torch.autograd.Function):
    """The floor: an op defined in Python that saves its inputs and allocates its outputs."""

    @staticmethod
    def forward(ctx, x, mc, ms):
        ctx.save_for_backward(x, mc, ms)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, g):
        x, mc, ms = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(mc), torch.empty_like(ms)


# Fewest batches a budgeted measurement takes: the minimum of fewer says little.
MIN_REPEATS = 3


def _batch_s(fn, device, calls: int) -> float:
    """Seconds per call over one batch of ``calls`` calls, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / calls


def host_us(fn, device, calls: int, repeats: int) -> float:
    """Microseconds per call: the fastest of ``repeats`` batches of ``calls`` calls (after one
    untimed batch)."""
    _batch_s(fn, device, calls)
    return min(_batch_s(fn, device, calls) for _ in range(repeats)) * 1e6


def plan_calls(call_s: float, share_s: float, max_calls: int, max_repeats: int) -> tuple[int, int]:
    """(calls per batch, repeats) for a path taking ``call_s`` seconds a call, within ``share_s``
    seconds for its warm-up batch and its timed ones: full batches of ``max_calls`` while the
    share allows at least MIN_REPEATS of them, then shorter batches; at least one call and
    MIN_REPEATS batches, even if that overruns the share."""
    affordable = int(share_s / max(call_s, 1e-9))  # calls the share holds
    repeats = min(max_repeats, affordable // max_calls - 1)
    if repeats >= MIN_REPEATS:
        return max_calls, repeats
    return max(1, min(max_calls, affordable // (MIN_REPEATS + 1))), MIN_REPEATS


def budgeted_host_us(fn, device, deadline: float, measurements_left: int, max_calls: int, max_repeats: int):
    """(µs per call, calls, repeats): :func:`host_us` sized by :func:`plan_calls` to an equal share
    of the time until ``deadline`` (``time.perf_counter()``) among ``measurements_left``; the
    first call (compiles, caches) and one timed call, the estimate, come out of the share."""
    start = time.perf_counter()
    share = max(0.0, deadline - start) / measurements_left
    fn()  # the first call compiles and plans; not timed
    call_s = _batch_s(fn, device, 1)
    calls, repeats = plan_calls(call_s, share - (time.perf_counter() - start), max_calls, max_repeats)
    return host_us(fn, device, calls, repeats), calls, repeats


def write_json(path: str, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file: a reader (or a kill) never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def path_calls(shape, layout: str, device) -> dict:
    """A zero-argument callable per entry of PATHS, on inputs of ``shape`` in ``layout``,
    with the maps as BAM produces them: mc (N, C), ms (N, 1, H, W)."""
    from bam_fused import bam_gate
    from bam_fused.kernels import gate_bwd

    n, c, h, w = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_()
    mc = torch.randn(n, c, device=device, requires_grad=True)
    ms = torch.randn(n, 1, h, w, device=device, requires_grad=True)
    g = torch.randn_like(x)
    gate = lambda: bam_gate(x, mc, ms, combine="product", backend="triton")
    y, y_floor = gate(), _AllocOnly.apply(x, mc, ms)
    grad = lambda out: lambda: torch.autograd.grad(out, (x, mc, ms), g, retain_graph=True)

    def fwd_nograd():
        with torch.no_grad():
            gate()

    xd, mcd, msd = x.detach(), mc.detach(), ms.detach()
    return {
        "fwd_nograd": fwd_nograd,
        "fwd_grad": gate,
        "bwd_autograd": grad(y),
        "bwd_launchers": lambda: gate_bwd(g, xd, mcd, msd, combine="product", residual=True),
        "floor_autograd": grad(y_floor),
    }


def module_calls(shape, layout: str, device) -> dict:
    """A zero-argument callable per entry of MODULE_PATHS: train-mode forward+backward of BAM and
    FusedBAM (paper variant) on x of ``shape`` in ``layout``. On CUDA, at a tiny map, the device
    never holds the host back: the time is the host's. On CPU the branches' convolutions compute
    (oneDNN's fixed cost per call dominates there), so the CPU figures are a smoke test, not the
    host cost of a GPU step."""
    from bam_fused import BAM, FusedBAM
    from bam_fused.fused_path import fused_path_blocker

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    eager = BAM(shape[1]).to(device).train()
    fused = FusedBAM(shape[1], backend="triton").to(device).train()
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn_like(x)
    return {
        "module_bam": lambda: eager(x).backward(g),
        "module_fused": lambda: fused(x).backward(g),
        "module_blocker": lambda: fused_path_blocker(fused, x),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stub", action="store_true", help="no-op kernels only (the only mode without CUDA)")
    parser.add_argument("--shape", type=int, nargs=4, default=(2, 64, 14, 14), metavar=("N", "C", "H", "W"))
    parser.add_argument("--calls", type=int, default=200, help="calls per timed batch (at most, with --budget-s)")
    parser.add_argument(
        "--repeats", type=int, default=60, help="batches; the fastest counts (at most, with --budget-s)"
    )
    parser.add_argument("--budget-s", type=float, help="size the batches to end within this many seconds")
    parser.add_argument("--quick", action="store_true", help="a few short batches (smoke runs)")
    parser.add_argument("--out", help="write the figures here as JSON (rewritten after every record)")
    parser.add_argument(
        "--paths", nargs="+", choices=MODULE_PATHS + PATHS, help="time only these (e.g. module_blocker: the path check)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # On CUDA both: the difference is what Triton's launcher and the device add to our Python.
    stub_modes = (True,) if args.stub or not cuda else (False, True)
    calls, repeats = (5, 3) if args.quick else (args.calls, args.repeats)
    layouts = ("nchw", "channels_last")
    # The whole module first: its host cost is the open question (NOTES.md, entry 11).
    paths = tuple(args.paths) if args.paths else MODULE_PATHS + PATHS
    measurements_left = len(stub_modes) * len(layouts) * len(paths)
    deadline = start + args.budget_s if args.budget_s else None
    data = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": list(args.shape),
        "calls": calls,
        "repeats": repeats,
        "budget_s": args.budget_s,
        "torch": torch.__version__,
        "records": [],
    }
    for stub in stub_modes:
        with stub_kernels() if stub else contextlib.nullcontext():
            for layout in layouts:
                fns = path_calls(tuple(args.shape), layout, device) | module_calls(tuple(args.shape), layout, device)
                for path in paths:
                    if deadline is None:
                        us, n, r = host_us(fns[path], device, calls, repeats), calls, repeats
                    else:
                        us, n, r = budgeted_host_us(fns[path], device, deadline, measurements_left, calls, repeats)
                    measurements_left -= 1
                    data["records"].append(
                        {"path": path, "layout": layout, "stub_kernels": stub, "host_us": us, "calls": n, "repeats": r}
                    )
                    if args.out:
                        write_json(args.out, data)
                    print(
                        f"{path:<15} {layout:<13} {'no-op' if stub else 'real':<6} kernels {us:7.1f} µs "
                        f"({r} × {n} calls)",
                        flush=True,
                    )
    print(f"host_time: {len(data['records'])} records in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
