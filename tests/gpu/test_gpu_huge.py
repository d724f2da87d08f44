"""A bf16 gate over more than 2³¹ elements, forward and backward, checked on sampled slices.

x is (2, 1024, 1024, 1025): 2 147 483 648 < numel, 4.3 GB per tensor, so offsets past the
int32 range are addressed in both layouts. The forward writes into a NaN-poisoned output; the
slices checked include the last channel and the last row, where an overflow lands.
"""

import pytest
import torch

from bam_fused import bam_gate
from bam_fused.kernels import gate_fwd
from gpu_common import DEVICE, ON_GPU, assert_close, poisoned_like, record, reference64

pytestmark = pytest.mark.gpu

# Off CUDA a tiny shape runs the same slicing logic through the interpreter (no overflow tested).
SHAPE = (2, 1024, 1024, 1025) if ON_GPU else (2, 8, 6, 7)
NEEDED_BYTES = 20 * 2**30  # x, y, g, gx at 4.3 GB each, plus the reference's slices


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
def test_bf16_gate_past_int32_offsets(cl):
    if ON_GPU and torch.cuda.mem_get_info(DEVICE)[0] < NEEDED_BYTES:
        pytest.skip(f"needs {NEEDED_BYTES / 2**30:.0f} GiB of free CUDA memory")
    n, c, h, w = SHAPE
    torch.manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.empty(SHAPE, device=DEVICE, dtype=torch.bfloat16, memory_format=fmt).normal_()
    assert x.numel() > 2**31 or not ON_GPU
    mc = torch.randn(n, c, device=DEVICE, dtype=torch.bfloat16)
    ms = torch.randn(n, h, w, device=DEVICE, dtype=torch.bfloat16)

    y = gate_fwd(x, mc, ms, combine="sum", residual=True, out=poisoned_like(x))
    unwritten = int(y.isnan().sum())
    del y

    leaves = [t.detach().requires_grad_() for t in (x, mc, ms)]
    y = bam_gate(*leaves, combine="sum", backend="triton")
    g = torch.empty_like(y).normal_()
    gx, gmc, gms = torch.autograd.grad(y, leaves, g)

    worst = {}
    for i in (0, n - 1):
        for ch in (0, c // 2, c - 1):  # whole channels: y, gx and gmc[i, ch] (sum over all of HW)
            sl = (slice(i, i + 1), slice(ch, ch + 1))
            y64, (gx64, gmc64, _) = reference64(x[sl], mc[sl], ms[i : i + 1], "sum", True, g[sl])
            for name, got, want in (("y", y[sl], y64), ("gx", gx[sl], gx64), ("gmc", gmc[sl], gmc64)):
                assert_close(got, want, f"{name}[{i}, {ch}]")
                worst[name] = max(worst.get(name, 0.0), (got.double().cpu() - want).abs().max().item())
        for row in (0, h - 1):  # whole rows across all channels: gms[i, row, :] (sum over C)
            xs = x[i : i + 1, :, row : row + 1]
            _, (_, _, gms64) = reference64(
                xs, mc[i : i + 1], ms[i : i + 1, row : row + 1], "sum", True, g[i : i + 1, :, row : row + 1]
            )
            assert_close(gms[i : i + 1, row : row + 1], gms64, f"gms[{i}, {row}]")
            worst["gms"] = max(
                worst.get("gms", 0.0), (gms[i : i + 1, row : row + 1].double().cpu() - gms64).abs().max().item()
            )
    record(
        f"huge/{'channels_last' if cl else 'nchw'}",
        shape=list(SHAPE),
        numel=x.numel(),
        unwritten_forward_elements=unwritten,
        max_abs_err=worst,
    )
    assert unwritten == 0, f"{unwritten} forward outputs left unwritten"
