"""``python -m bam_fused``: check FusedBAM against BAM and time the gate, on whatever is here.

On CUDA: on the ResNet-50 BAM shapes (bf16, channels_last), checks FusedBAM against BAM and
prints ms, GB/s and speed-ups of the gate forward+backward for the released-code-style eager
gate, torch.compile of it, and the fused kernels. On CPU: runs FusedBAM's and the gate's
Triton kernels through the interpreter on small shapes to show they agree with the float64
reference as closely as BAM does, times the CPU path against the eager gate, and says that GPU
timings need CUDA.
"""

import argparse
import sys
import time

import torch

from bam_fused.common import COMBINES, RESNET50_BAM_SHAPES, interpret_without_cuda, relative_error

CUDA = interpret_without_cuda()  # before the kernels are imported (by the imports below)

import bam_fused  # noqa: E402
from bam_fused import BAM, FusedBAM, bam_gate, reference  # noqa: E402

CPU_CHECK_SHAPES = [(2, 64, 7, 7), (2, 32, 5, 13), (1, 16, 1, 1)]
CPU_TIMING_SHAPE = (8, 256, 28, 28)
CPU_MODULE_SHAPE = (4, 64, 7, 7)


def _maps(x):
    n, c, h, w = x.shape
    mc = torch.randn(n, c, device=x.device, dtype=x.dtype, requires_grad=True)
    ms = torch.randn(n, h, w, device=x.device, dtype=x.dtype, requires_grad=True)
    return mc, ms


def check_modules(shape, device, dtype) -> tuple[float, float]:
    """(FusedBAM's, BAM's) relative error against a float64 copy of BAM (same weights, train mode),
    the larger of the output's and x's gradient's, under ``dtype`` autocast (float32: none).

    In a half dtype both run their branches in it, each rounding in its own order: what shows that
    FusedBAM computes BAM is that it lands as near the float64 answer as BAM does.
    """
    c = shape[1]
    eager = BAM(c).to(device)
    fused = FusedBAM(c).to(device)
    fused.load_state_dict(eager.state_dict())
    exact = BAM(c).to(device, torch.float64)
    exact.load_state_dict(eager.state_dict())
    x = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
    g = torch.randn(shape, device=device)
    results = []
    for module in (fused, eager, exact):
        xi = (x.double() if module is exact else x).detach().requires_grad_()
        with torch.autocast(device.type, dtype=dtype, enabled=module is not exact and dtype != torch.float32):
            y = module(xi)
        results.append((y, torch.autograd.grad(y, xi, g.to(y.dtype))[0]))
    *ours, ref = results
    return tuple(max(relative_error(a, b) for a, b in zip(r, ref)) for r in ours)


def time_cuda(fn, rep_ms=200) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, rep=rep_ms, return_mode="median")


def time_cpu(fn, reps=5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def gate_fwd_bwd(gate, x, mc, ms):
    """One forward and backward of ``gate`` with a fresh upstream gradient's worth of work."""

    def run():
        y = gate(x, mc, ms)
        torch.autograd.grad(y, (x, mc, ms), torch.ones_like(y))

    return run


def main_cuda() -> int:
    print(f"bam_fused {bam_fused.__version__} on {torch.cuda.get_device_name()} — torch {torch.__version__}")
    report(torch.device("cuda"), RESNET50_BAM_SHAPES, time_cuda)
    print("\n(ms and GB/s pairs per provider; full benchmarks: pytest benchmarks/, see docs/performance.md)")
    return 0


def report(device, shapes, timer, dtype=torch.bfloat16) -> None:
    """FusedBAM vs BAM, then the gate's fwd+bwd for eager, torch.compile and fused at ``shapes``."""
    print("\nFusedBAM and BAM (bf16 autocast, channels_last, train mode): relative error against float64,")
    print("output and x's gradient")
    for shape in shapes:
        fused_err, eager_err = check_modules(shape, device, dtype)
        print(f"  {str(shape):<22} FusedBAM {fused_err:.2e}   BAM {eager_err:.2e}")

    eager = lambda x, mc, ms: reference.released_code_gate(x, mc, ms, "product")
    compiled = torch.compile(eager)
    fused = lambda x, mc, ms: bam_gate(x, mc, ms, combine="product")
    print("\nGate forward+backward (product, bf16, channels_last): median ms, GB/s over the minimum traffic")
    print(f"  {'shape':<22} {'eager':>14} {'compiled':>14} {'fused':>14} {'vs eager':>9} {'vs compiled':>12}")
    for shape in shapes:
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_()
        mc, ms = _maps(x)
        # forward: read x, write y; backward: read g and x, write gx (the small maps are noise)
        traffic = 5 * x.numel() * x.element_size()
        ms_ = {
            name: timer(gate_fwd_bwd(fn, x, mc, ms))
            for name, fn in (("eager", eager), ("compiled", compiled), ("fused", fused))
        }
        cells = "".join(f"{ms_[k]:>7.3f} {traffic / ms_[k] / 1e6:>6.0f}" for k in ("eager", "compiled", "fused"))
        print(
            f"  {str(shape):<22} {cells} {ms_['eager'] / ms_['fused']:>8.2f}x {ms_['compiled'] / ms_['fused']:>11.2f}x"
        )


def main_cpu() -> int:
    print(f"bam_fused {bam_fused.__version__} — torch {torch.__version__}, no CUDA device")
    print("\n1. FusedBAM (its whole-module kernels through Triton's interpreter) and BAM, train mode,")
    print("   channels_last: relative error against float64, the larger of the output's and x's gradient's")
    for dtype in (torch.float32, torch.bfloat16):
        fused_err, eager_err = check_modules(CPU_MODULE_SHAPE, torch.device("cpu"), dtype)
        name = "float32" if dtype == torch.float32 else "bf16 autocast"
        print(f"   {str(CPU_MODULE_SHAPE):<18} {name:<14} FusedBAM {fused_err:.1e}   BAM {eager_err:.1e}")

    print("\n2. The gate's Triton kernels through the interpreter vs the float64 reference")
    print(f"   {'shape':<18} {'combine':<8} {'|y-ref|/|ref|':>14} {'|grads-ref|/|ref|':>18}")
    # Fixed inputs: at 1×1 a gms entry is a sum of 16 terms that can cancel to ~1 % of their size,
    # where fp32 rounding alone exceeds 1e-5 relative (1 unseeded draw in ~1500 did).
    torch.manual_seed(0)
    ok = True
    for shape in CPU_CHECK_SHAPES:
        for combine in COMBINES:
            x = torch.randn(shape, dtype=torch.float32, requires_grad=True)
            mc, ms = _maps(x)
            y = bam_gate(x, mc, ms, combine=combine, backend="triton")
            g = torch.randn_like(y)
            grads = torch.autograd.grad(y, (x, mc, ms), g)
            ins64 = [t.detach().double().requires_grad_() for t in (x, mc, ms)]
            y64 = reference.bam_gate(*ins64, combine)
            grads64 = torch.autograd.grad(y64, ins64, g.double())
            e_y = relative_error(y, y64)
            e_g = max(relative_error(a, b) for a, b in zip(grads, grads64))
            ok &= e_y < 1e-5 and e_g < 1e-5
            print(f"   {str(shape):<18} {combine:<8} {e_y:>14.1e} {e_g:>18.1e}")
    print(f"   {'agree' if ok else 'DISAGREE'}")

    print(f"\n3. CPU path (reference) vs the released-code-style eager gate, float32 {CPU_TIMING_SHAPE}, fwd+bwd")
    x = torch.randn(CPU_TIMING_SHAPE, requires_grad=True)
    mc, ms = _maps(x)
    t_eager = time_cpu(gate_fwd_bwd(lambda *a: reference.released_code_gate(*a, "product"), x, mc, ms))
    t_ours = time_cpu(gate_fwd_bwd(lambda *a: bam_gate(*a, combine="product", backend="reference"), x, mc, ms))
    print(f"   eager {t_eager:.1f} ms   bam_fused (CPU path) {t_ours:.1f} ms   ({t_eager / t_ours:.2f}x)")
    print("\nGPU timings need CUDA: run `python -m bam_fused` on a machine with an NVIDIA GPU,")
    print("or `pytest benchmarks/` for the full suite.")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bam_fused", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    return main_cuda() if CUDA else main_cpu()


if __name__ == "__main__":
    sys.exit(main())
