"""Determinism: the backward is bitwise reproducible and nothing in the gate warns under
``torch.use_deterministic_algorithms(True)``.

The backward's two reductions leave the kernel as partial sums reduced in a fixed order (no
float atomics), so 20 runs on the same inputs must agree to the bit, at the ResNet-50 shapes
where the c-split is widest.
"""

import warnings

import pytest
import torch

from bam_fused import FusedBAM, bam_gate
from bam_fused.common import RESNET50_BAM_SHAPES
from gpu_common import DEVICE, ON_GPU, make_inputs, record

pytestmark = pytest.mark.gpu

RUNS = 20
CASES = (
    list(zip(RESNET50_BAM_SHAPES[::-1], ("sum", "max", "sum"), (True, True, False)))
    if ON_GPU
    else [((2, 24, 7, 7), "sum", True), ((2, 8, 9, 9), "max", False)]
)


def _fwd_bwd(x, mc, ms, combine, g):
    leaves = [t.detach().requires_grad_() for t in (x, mc, ms)]
    y = bam_gate(*leaves, combine=combine, backend="triton")
    return (y, *torch.autograd.grad(y, leaves, g))


@pytest.mark.parametrize(
    "shape,mode,cl", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v)
)
def test_backward_is_bitwise_reproducible(shape, mode, cl):
    x, mc, ms, combine = make_inputs(shape, mode, torch.bfloat16, cl, device=DEVICE)
    g = torch.randn_like(x)
    first = _fwd_bwd(x, mc, ms, combine, g)
    mismatches = {name: 0 for name in ("y", "gx", "gmc", "gms")}
    for _ in range(RUNS - 1):
        for name, a, b in zip(mismatches, first, _fwd_bwd(x, mc, ms, combine, g)):
            mismatches[name] += int(not torch.equal(a, b))
    record(
        f"determinism/{mode}-{'cl' if cl else 'nchw'}-{'x'.join(map(str, shape))}",
        runs=RUNS,
        runs_differing_from_first=mismatches,
        bitwise_equal=not any(mismatches.values()),
    )
    assert not any(mismatches.values()), f"runs differing from the first, of {RUNS}: {mismatches}"


def test_nothing_warns_under_deterministic_algorithms():
    shape = (8, 64, 14, 14) if ON_GPU else (2, 32, 6, 6)
    x, mc, ms, combine = make_inputs(shape, "sum", torch.bfloat16, True, device=DEVICE)
    g = torch.randn_like(x)
    module = FusedBAM(shape[1], backend="triton").to(DEVICE).train()
    xm = torch.randn(shape, device=DEVICE, requires_grad=True)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as gate_warnings:
            warnings.simplefilter("always")
            _fwd_bwd(x, mc, ms, combine, g)
        # The module's convolutions and BatchNorms are PyTorch's: recorded, not ours to assert.
        with warnings.catch_warnings(record=True) as module_warnings:
            warnings.simplefilter("always")
            module(xm).sum().backward()
    finally:
        torch.use_deterministic_algorithms(was)
    # The interpreter (CPU runs of this file) raises numpy DeprecationWarnings: not the gate's doing.
    gate_msgs = [str(w.message) for w in gate_warnings if not issubclass(w.category, DeprecationWarning)]
    record("determinism/warnings", gate=gate_msgs, fused_bam_module=[str(w.message) for w in module_warnings])
    assert not gate_msgs, f"the gate warned under deterministic algorithms: {gate_msgs}"
