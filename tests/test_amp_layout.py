"""Mixed precision (CPU autocast, bf16 and fp16) and channels_last: FusedBAM and resnet_bam.

Without CUDA the fused gate runs the Triton kernels through the interpreter (conftest), under
``torch.autocast("cpu")``, which puts the branches' Linear/Conv (and BN) in the half dtype while
the gate computes in float32.
"""

import pytest
import torch

from bam_fused import BAM, FusedBAM, bam_gate
from bam_fused.kernels.layout import as_kernel_layout
from bam_fused.models import resnet_bam

CL = torch.channels_last
# The gate alone against the reference in a half dtype: one rounding of the output apart.
SAME_AUTOCAST_TOL = {torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=3e-3, atol=3e-3)}
# Autocast vs float32 eager, as a relative L2 error: the branches themselves run in half precision.
# FusedBAM computes them in its own kernels, rounding where eager rounds but summing in another
# order, so it must be no further from float32 than eager BAM is (FACTOR times, plus this floor)
# rather than match eager's half-precision result bit for bit.
VS_FP32_REL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}
FACTOR = 3
DTYPES = [torch.bfloat16, torch.float16]
# Biases followed by a train-mode BN (all of them in the paper variant): their true gradient is
# zero, so what autocast leaves there is rounding noise, not something to compare.
BIAS_BEFORE_BN = (
    "fc_0.bias",
    "fc_final.bias",
    "conv_reduce0.bias",
    "conv_di_0.bias",
    "conv_di_1.bias",
    "conv_final.bias",
)


def _pair(cls_kwargs=None, channels=64):
    eager = BAM(channels, **(cls_kwargs or {}))
    with torch.no_grad():  # non-trivial final BNs, so that every branch matters
        for m in eager.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fused = FusedBAM(channels, **(cls_kwargs or {}))
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _run(module, x, dtype, memory_format):
    """Forward+backward under autocast (dtype None: float32); (y, x.grad, param grads)."""
    xi = x.contiguous(memory_format=memory_format).requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = module(xi)
    weight = torch.linspace(-1, 1, y.numel()).view(y.shape)
    (y.float() * weight).sum().backward()
    return y, xi.grad, {k: p.grad for k, p in module.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("combine", ["sum", "product"])
def test_fused_bam_autocast_matches_eager(dtype, memory_format, combine):
    eager, fused = _pair({"combine": combine})
    x = torch.randn(4, 64, 8, 6)  # non-square on purpose
    ye, gxe, gpe = _run(eager, x, dtype, memory_format)
    yf, gxf, gpf = _run(fused, x, dtype, memory_format)
    assert yf.dtype == ye.dtype == torch.float32  # the gate keeps x's dtype
    assert yf.is_contiguous(memory_format=memory_format) and gxf.is_contiguous(memory_format=memory_format)
    y32, gx32, gp32 = _run(eager, x, None, memory_format)
    pairs = [("y", yf, ye, y32), ("x.grad", gxf, gxe, gx32)]
    # Parameter gradients pass back through BN1d over a batch of 4, which turns half-precision
    # rounding of gmc into large relative changes in eager and fused alike.
    pairs += [(k, gpf[k], gpe[k], gp32[k]) for k in gpe if not k.endswith(BIAS_BEFORE_BN)]
    for name, f, e, ref in pairs:
        assert _rel(f, ref) <= FACTOR * _rel(e, ref) + VS_FP32_REL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_bam_half_input(dtype):
    # A half-precision activation (as inside an autocast network whose convs return half).
    eager, fused = _pair()
    x = torch.randn(4, 64, 8, 8).to(dtype)
    ye, gxe, _ = _run(eager, x, dtype, CL)
    yf, gxf, _ = _run(fused, x, dtype, CL)
    y32, gx32, _ = _run(eager, x.float(), None, CL)
    assert yf.dtype == dtype and gxf.dtype == dtype and yf.is_contiguous(memory_format=CL)
    for name, f, e, ref in (("y", yf, ye, y32), ("x.grad", gxf, gxe, gx32)):
        assert _rel(f, ref) <= FACTOR * _rel(e, ref) + VS_FP32_REL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES])
def test_gate_keeps_channels_last_without_copy(dtype):
    x = torch.randn(2, 32, 5, 7, dtype=dtype).contiguous(memory_format=CL)
    assert as_kernel_layout(x) is x  # the kernels address channels_last by strides
    mc, ms = torch.randn(2, 32), torch.randn(2, 5, 7)  # float32 maps beside a half x, as autocast gives
    xi = x.clone().requires_grad_()
    y = bam_gate(xi, mc, ms, backend="triton")
    assert y.stride() == x.stride() and y.dtype == dtype
    y.backward(torch.randn_like(y))
    assert xi.grad.stride() == x.stride()
    ref = bam_gate(x, mc, ms, backend="reference")
    torch.testing.assert_close(y, ref, **({} if dtype == torch.float32 else SAME_AUTOCAST_TOL[dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_bam_autocast_channels_last(dtype):
    # A whole network in train mode on a batch of 2 amplifies every rounding (BN over 2×2 maps),
    # and the interpreter rounds float32 → bfloat16 toward zero where PyTorch rounds to nearest.
    # So the fused model must be no further from float32 than the eager model is (plus a floor),
    # rather than match the eager half-precision model bit for bit.
    eager = resnet_bam(18, "CIFAR10", 10, attention="bam").to(memory_format=CL)
    fused = resnet_bam(18, "CIFAR10", 10, attention="fused").to(memory_format=CL)
    fused.load_state_dict(eager.state_dict())
    layouts = []
    fused.bam1.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=CL)))
    x = torch.randn(2, 3, 16, 16)
    ye, gxe, gpe = _run(eager.train(), x, dtype, CL)
    yf, gxf, gpf = _run(fused.train(), x, dtype, CL)
    y32, gx32, gp32 = _run(eager.train(), x, None, CL)
    assert layouts == [True]
    assert yf.dtype == dtype  # fc runs in the autocast dtype
    assert gxf.is_contiguous(memory_format=CL)
    pairs = [("logits", yf, ye, y32), ("x.grad", gxf, gxe, gx32)]
    keys = (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "bam2.channel_att.gate_c.gate_c_fc_0.weight",
        "fc.weight",
    )
    pairs += [(k, gpf[k], gpe[k], gp32[k]) for k in keys]
    for name, f, e, ref in pairs:
        assert torch.isfinite(f).all(), name
        assert _rel(f, ref) <= FACTOR * _rel(e, ref) + VS_FP32_REL[dtype], name
