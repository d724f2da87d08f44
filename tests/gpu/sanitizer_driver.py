"""Run every gate kernel variant and the whole module's kernels once, for compute-sanitizer
(memcheck and racecheck).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python tests/gpu/sanitizer_driver.py
    compute-sanitizer --tool racecheck python tests/gpu/sanitizer_driver.py

First a FusedBAM training step (forward and backward through its one autograd node:
pool_reduce, channel_mlp, the gate, input_grad) per variant, in the other layout each, checked
against eager BAM in float64; then forward and backward through ``bam_gate`` for every mode (sum,
product, max, channel-only, spatial-only; sum also without the residual) on 7×7 maps, sum and max
on 1×1, 5×13 and 56×56, NCHW and channels_last, bf16 (fp32 on one shape), plus the backward with
small forced tiles and a c-split. Few shapes per mode: each is a Triton compile, and the GPU run's
budget is short; the last lines printed count the kernel variants compiled (gpu_common).
Without PyTorch's caching allocator every tensor is its own cudaMalloc, so memcheck sees an
access past a tensor's end. Each result is checked against the float64 reference: exit 1 if any
case mismatched (the others still run, so that the sanitizers see every kernel), 0 otherwise; one
line per case, so a run cut short shows how far it got.
``--small`` runs 1×1 and 7×7 only (the CPU interpreter smoke run).
"""

import argparse
import sys
import time

import torch

from bam_fused import BAM, FusedBAM, bam_gate
from bam_fused.kernels import BwdConfig, gate_bwd
from gpu_common import DEVICE, assert_close, kernel_variants, make_inputs, reference64

MODES = (("sum", True), ("sum", False), ("product", True), ("max", True), ("channel", True), ("spatial", True))
SMALL_BWD = BwdConfig(block_c=8, block_hw=16, splits=3, num_warps=2, reduce_block=64)
# One FusedBAM training step per variant, each in the other layout: run first, so that a run cut
# short by its time guard has checked the whole module's kernels.
MODULE_STEPS = (("paper", False), ("official", True))


def cases(small: bool):
    for cl in (False, True):
        for mode, residual in MODES:
            yield (2, 64, 7, 7), mode, residual, cl, torch.bfloat16
    for h, w in ((1, 1),) if small else ((1, 1), (5, 13), (56, 56)):
        for cl in (False, True):
            for mode in ("sum", "max"):
                yield (2, 64, h, w), mode, True, cl, torch.bfloat16
    yield (2, 64, 7, 7), "sum", True, True, torch.float32


def run_case(shape, mode, residual, cl, dtype) -> None:
    x, mc, ms, combine = make_inputs(shape, mode, dtype, cl, device=DEVICE)
    g = torch.randn_like(x)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, mc, ms)]
    y = bam_gate(*leaves, combine=combine, residual=residual, backend="triton")
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], g)
    y64, grads64 = reference64(x, mc, ms, combine, residual, g)
    name = f"{mode} residual={residual} channels_last={cl} {dtype} {shape}"
    assert_close(y, y64, f"{name}: y")
    for got, want in zip(grads, [t for t in grads64 if t is not None]):
        assert_close(got, want, f"{name}: grad")


def run_split_backward(shape, cl) -> None:
    """The backward with small tiles, 3 splits of the walked axis and a small reduce block (edge
    tiles, several partials, several reduce programs per map)."""
    x, mc, ms, combine = make_inputs(shape, "max", torch.bfloat16, cl, device=DEVICE)
    g = torch.randn_like(x)
    gx, gmc, gms = gate_bwd(g, x, mc, ms, combine=combine, residual=True, config=SMALL_BWD)
    _, (gx64, gmc64, gms64) = reference64(x, mc, ms, combine, True, g)
    assert_close(gx, gx64, f"split backward {shape} gx")
    assert_close(gmc, gmc64, f"split backward {shape} gmc")
    assert_close(gms, gms64, f"split backward {shape} gms")


def run_module_step(variant: str, cl: bool) -> None:
    """One train-mode FusedBAM forward+backward (its one-node path) against eager BAM, float64."""
    eager = BAM(32, 4, variant=variant).to(DEVICE, torch.float64)
    fused = FusedBAM(32, 4, variant=variant, backend="triton").to(DEVICE, torch.float64)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(3, 32, 9, 11, device=DEVICE, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    results = []
    for module in (eager, fused):
        xi = x.clone().requires_grad_()
        y = module.train()(xi)
        y.backward(g)
        results.append([y, xi.grad] + [p.grad for p in module.parameters()])
    assert type(y.grad_fn).__name__ == "_FusedBAMFunctionBackward", "FusedBAM did not take its fused path"
    for want, got in zip(*results, strict=True):  # absolute floor: biases before a train-mode BN have 0 gradients
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9, msg=f"module {variant} channels_last={cl}")


def all_cases(small: bool):
    """(label, zero-argument check) for every case, in the order run: the module steps first."""
    for variant, cl in MODULE_STEPS:
        yield f"FusedBAM {variant} channels_last={cl}", lambda v=variant, c=cl: run_module_step(v, c)
    for case in cases(small):
        shape, mode, residual, cl, dtype = case
        yield f"{mode} residual={residual} channels_last={cl} {dtype} {shape}", lambda c=case: run_case(*c)
    for shape in [(2, 40, 9, 11)] + ([] if small else [(2, 64, 56, 56)]):
        for cl in (False, True):
            yield f"split backward channels_last={cl} {shape}", lambda s=shape, c=cl: run_split_backward(s, c)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1×1 and 7×7 maps only")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    count, mismatches = 0, 0
    with kernel_variants() as variants:
        # A mismatch does not stop the run: the sanitizers still see every kernel after it.
        for label, check in all_cases(args.small):
            count += 1
            try:
                check()
            except AssertionError as e:
                mismatches += 1
                print(f"case {count}: MISMATCH {label}: {e}", flush=True)
            else:
                print(f"case {count}: {label}", flush=True)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        print(variants.summary(), flush=True)
    seconds = time.perf_counter() - t0
    if mismatches:
        print(f"sanitizer_driver: MISMATCH in {mismatches} of {count} cases on {DEVICE} ({seconds:.1f} s)")
        return 1
    print(
        f"sanitizer_driver: {count} cases (forward + backward) on {DEVICE}, "
        f"all match the float64 reference ({seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
