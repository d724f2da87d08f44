"""Mixed precision (CPU autocast, bf16 and fp16) and channels_last: FusedBAM and resnet_bam.

Without CUDA the fused gate runs the Triton kernels through the interpreter (conftest), under
``torch.autocast("cpu")``, which puts the branches' Linear/Conv (and BN) in the half dtype while
the gate computes in float32.
"""

import pytest
import torch

from bam_fused import bam_gate
from bam_fused.kernels.layout import as_kernel_layout
from bam_fused.models import resnet_bam
from exact import assert_as_exact_as, float64_copy, module_pair
from gate_cases import assert_close, reference64

CL = torch.channels_last
DTYPES = [torch.bfloat16, torch.float16]


def _run(module, x, dtype, memory_format):
    """Forward+backward under ``dtype`` autocast (None: none) with a fixed upstream gradient:
    name → tensor for y, x.grad and every parameter's gradient."""
    xi = x.detach().clone(memory_format=memory_format).requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = module(xi)
    weight = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape)
    (y.double() * weight).sum().backward()
    return {"y": y, "x.grad": xi.grad} | {f"{k}.grad": p.grad for k, p in module.named_parameters()}


def _judged(eager, fused, x, dtype, memory_format=CL):
    """(FusedBAM's results, eager's) under ``dtype`` autocast, and eager's float64 run (no
    autocast, x's values as given) that both are judged against."""
    exact = float64_copy(eager)
    want, got = (_run(m, x, dtype, memory_format) for m in (eager, fused))
    return got, want, _run(exact, x.double(), None, memory_format)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("combine", ["sum", "product"])
def test_fused_bam_autocast_matches_eager(dtype, memory_format, combine):
    """The branches in the half dtype (as autocast runs eager BAM's), the gate in float32: FusedBAM
    rounds where eager rounds but sums in another order, so it must be as near float64 as eager is."""
    eager, fused = module_pair(args=(64, 16), combine=combine)
    x = torch.randn(4, 64, 8, 6)  # non-square on purpose
    got, want, exact = _judged(eager, fused, x, dtype, memory_format)
    assert got["y"].dtype == want["y"].dtype == torch.float32  # the gate keeps x's dtype
    assert got["y"].is_contiguous(memory_format=memory_format)
    assert got["x.grad"].is_contiguous(memory_format=memory_format)
    assert_as_exact_as(got, want, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_bam_half_input(dtype):
    # A half-precision activation (as inside an autocast network whose convs return half).
    eager, fused = module_pair(args=(64, 16))
    x = torch.randn(4, 64, 8, 8).to(dtype)
    got, want, exact = _judged(eager, fused, x, dtype)
    assert got["y"].dtype == dtype and got["x.grad"].dtype == dtype and got["y"].is_contiguous(memory_format=CL)
    assert_as_exact_as(got, want, exact, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES])
def test_gate_keeps_channels_last_without_copy(dtype):
    x = torch.randn(2, 32, 5, 7, dtype=dtype).contiguous(memory_format=CL)
    assert as_kernel_layout(x) is x  # the kernels address channels_last by strides
    mc, ms = torch.randn(2, 32), torch.randn(2, 5, 7)  # float32 maps beside a half x, as autocast gives
    xi = x.clone().requires_grad_()
    y = bam_gate(xi, mc, ms, backend="triton")
    assert y.stride() == x.stride() and y.dtype == dtype
    g = torch.randn_like(y)
    y.backward(g)
    assert xi.grad.stride() == x.stride()
    y64, (gx64, _, _) = reference64(x, mc, ms, "sum", True, g)
    assert_close(y, y64, "y")
    assert_close(xi.grad, gx64, "x.grad")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_bam_autocast_channels_last(dtype):
    # A whole network in train mode on a batch of 2 amplifies every rounding (BN over 2×2 maps),
    # and the interpreter rounds float32 → bfloat16 toward zero where PyTorch rounds to nearest.
    # So the fused model must be no further from a float64 run than the eager model is (plus a floor),
    # rather than match the eager half-precision model bit for bit.
    eager = resnet_bam(18, "CIFAR10", 10, attention="bam").to(memory_format=CL)
    fused = resnet_bam(18, "CIFAR10", 10, attention="fused").to(memory_format=CL)
    fused.load_state_dict(eager.state_dict())
    layouts = []
    fused.bam1.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=CL)))
    x = torch.randn(2, 3, 16, 16)
    got, want, exact = _judged(eager.train(), fused.train(), x, dtype)
    assert layouts == [True]
    assert got["y"].dtype == dtype  # fc runs in the autocast dtype
    assert got["x.grad"].is_contiguous(memory_format=CL)
    keys = (
        "y",
        "x.grad",
        "conv1.weight.grad",
        "layer1.0.conv1.weight.grad",
        "bam2.channel_att.gate_c.gate_c_fc_0.weight.grad",
        "fc.weight.grad",
    )
    for k in keys:
        assert torch.isfinite(got[k]).all(), k
    assert_as_exact_as(*({k: r[k] for k in keys} for r in (got, want, exact)), dtype)
