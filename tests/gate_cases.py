"""Shared cases and checks for the gate tests: inputs, the float64 reference, tolerances.

Every comparison is against the reference evaluated in float64 on the same (rounded) inputs,
so the only error allowed is the kernel's float32 math and the rounding of its outputs.
"""

import torch

from bam_fused import reference
from bam_fused.common import GATE_MODES as MODES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Per output dtype: the float32 math plus one rounding of the output; bf16 allows two ulps
# because the interpreter truncates fp32→bf16 where a GPU rounds to nearest.
TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def make_inputs(shape, mode, dtype, channels_last=False, map_dtype=None, device="cpu", scale=2.0):
    """x (N, C, H, W) in ``dtype``; mc (N, C), ms (N, H, W) in ``map_dtype`` (default dtype) or None."""
    combine, has_mc, has_ms = MODES[mode]
    n, c, h, w = shape
    map_dtype = map_dtype or dtype
    x = (torch.randn(shape, device=device) * scale).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    mc = (torch.randn(n, c, device=device) * scale).to(map_dtype) if has_mc else None
    ms = (torch.randn(n, h, w, device=device) * scale).to(map_dtype) if has_ms else None
    return x, mc, ms, combine


def reference64(x, mc, ms, combine, residual, g=None):
    """Forward (and gradients for upstream ``g``) of the reference in float64, on CPU."""
    d = lambda t: None if t is None else t.detach().double().cpu().requires_grad_()
    x64, mc64, ms64 = d(x), d(mc), d(ms)
    y = reference.bam_gate(x64, mc64, ms64, combine, residual)
    if g is None:
        return y.detach()
    inputs = [t for t in (x64, mc64, ms64) if t is not None]
    grads = iter(torch.autograd.grad(y, inputs, g.detach().double().cpu()))
    return y.detach(), tuple(next(grads) if t is not None else None for t in (x64, mc64, ms64))


def assert_close(actual, expected, name=""):
    """``actual`` (any dtype/device) against a float64 ``expected`` within ``actual``'s tolerance."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN in output (unwritten or wrong element)"
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected, **TOL[actual.dtype], msg=lambda m: f"{name}: {m}"
    )


def assert_maps_apart(mc, ms, gap=1e-3):
    """max is not differentiable at ties: finite differences (gradcheck) need mc and ms well apart."""
    if mc is not None and ms is not None:
        assert (mc[:, :, None, None] - ms[:, None]).abs().min() > gap, "redraw: mc and ms too close for max"


def poisoned_like(t, dtype=None):
    """A tensor laid out like ``t`` filled with NaN: any element a kernel forgets stays NaN."""
    return torch.full_like(t, float("nan"), dtype=dtype)
