"""CUDA equivalence, fast tier: the compiled kernels against the reference in float64.

Every mode (sum, product, max with ties, channel-only, spatial-only), residual on and off,
fp32/fp16/bf16, NCHW and channels_last, odd maps (1×1, 7×7, 5×13, C=1, 56×56), forward and
all three gradients. Outputs and partial sums are poisoned with NaN before each launch, so an
element a kernel fails to write shows up. Cases are picked to compile few kernel variants.
"""

import pytest
import torch

from bam_fused import bam_gate
from bam_fused.common import relative_error
from bam_fused.kernels import BwdConfig, FwdConfig, bwd_buffers, bwd_config, bwd_plan, gate_bwd, gate_fwd
from bam_fused.kernels.target import target_of
from gpu_common import DEVICE, assert_close, make_inputs, poisoned_like, record, reference64

pytestmark = pytest.mark.gpu

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# Tiles far smaller than the heuristic's, with a 3-way c-split: many masked edge tiles.
SMALL_FWD = FwdConfig(block_c=8, block_hw=16, num_warps=2)
SMALL_BWD = BwdConfig(block_c=8, block_hw=16, splits=3, num_warps=2, reduce_block=64)


def _case(shape, mode, dtype, cl=False, residual=True, map_dtype=None, ties=False, small=False, stages=1):
    name = (
        f"{mode}-{'res' if residual else 'nores'}-{str(dtype)[6:]}-{'cl' if cl else 'nchw'}-"
        f"{'x'.join(map(str, shape))}"
        + ("-mapf32" if map_dtype else "")
        + ("-ties" if ties else "")
        + ("-smalltiles" if small else "")
        + (f"-stages{stages}" if stages > 1 else "")
    )
    return pytest.param(shape, mode, dtype, cl, residual, map_dtype, ties, small, stages, id=name)


CASES = (
    [
        _case((2, 24, 5, 13), m, F32, residual=r)
        for m in ("sum", "product", "max", "channel", "spatial")
        for r in (True, False)
    ]
    + [
        _case(s, "product", d, cl)
        for d in (F32, F16, BF16)
        for cl in (False, True)
        for s in ((2, 16, 7, 7), (3, 1, 5, 13), (2, 32, 1, 1))
    ]
    + [
        _case((2, 64, 56, 56), "max", BF16, cl=True, ties=True),
        _case((2, 48, 14, 14), "sum", BF16, cl=True, map_dtype=F32),
        _case((2, 24, 7, 7), "channel", BF16, cl=True),
        _case((2, 24, 7, 7), "spatial", BF16, cl=True),
        _case((2, 40, 9, 11), "sum", F32, small=True),
        _case((2, 40, 9, 11), "sum", BF16, cl=True, small=True),
    ]
    # The backward's walk prefetched through shared memory (cp.async), a tuning candidate.
    + [_case((2, 40, 9, 11), "product", BF16, cl, small=True, stages=3) for cl in (False, True)]
    + [_case((2, 64, 28, 28), "product", BF16, cl, stages=3) for cl in (False, True)]
)


@pytest.mark.parametrize("shape,mode,dtype,cl,residual,map_dtype,ties,small,stages", CASES)
def test_kernels_match_float64_reference(request, shape, mode, dtype, cl, residual, map_dtype, ties, small, stages):
    x, mc, ms, combine = make_inputs(shape, mode, dtype, cl, map_dtype, device=DEVICE)
    if ties:  # integers: mc == ms at many (c, hw), where max splits the gradient in half
        mc, ms = mc.round(), ms.round()
    g = torch.randn_like(x)
    y64, (gx64, gmc64, gms64) = reference64(x, mc, ms, combine, residual, g)

    y = gate_fwd(
        x, mc, ms, combine=combine, residual=residual, config=SMALL_FWD if small else None, out=poisoned_like(x)
    )

    n, c, h, w = shape
    cfg = SMALL_BWD if small else bwd_config(n, c, h * w, cl, x.element_size(), target_of(DEVICE).sms)
    cfg = cfg._replace(num_stages=stages)
    plan = bwd_plan(x, cfg)
    out = bwd_buffers(x, mc, ms, plan, fill=float("nan"))
    gx, gmc, gms = gate_bwd(g, x, mc, ms, combine=combine, residual=residual, config=cfg, out=out)

    errs = {"y": relative_error(y, y64), "gx": relative_error(gx, gx64)}
    gmc_part, gms_part = plan.part_views(out.parts)
    parts = {"gmc_part": gmc_part if mc is not None else None, "gms_part": gms_part if ms is not None else None}
    unwritten = {k: int(v.isnan().sum()) if v is not None else 0 for k, v in parts.items()}
    if gmc is not None:
        errs["gmc"] = relative_error(gmc, gmc64)
    if gms is not None:
        errs["gms"] = relative_error(gms, gms64)
    record(
        f"equivalence/{request.node.callspec.id}",
        rel_err=errs,
        unwritten_partials=unwritten,
        config={"bwd": cfg._asdict()},
    )

    assert unwritten == {"gmc_part": 0, "gms_part": 0}, f"partial sums left unwritten: {unwritten}"
    assert_close(y, y64, "y")
    assert_close(gx, gx64, "gx")
    if gmc is not None:
        assert_close(gmc, gmc64, "gmc")
    if gms is not None:
        assert_close(gms, gms64, "gms")

    # The public path (custom op under autograd) keeps x's layout and agrees with the launches.
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, mc, ms)]
    yp = bam_gate(*leaves, combine=combine, residual=residual, backend="triton")
    fmt = torch.channels_last if cl else torch.contiguous_format
    assert yp.is_contiguous(memory_format=fmt), f"output strides {yp.stride()} lost x's layout"
    assert_close(yp, y64, "bam_gate y")
    grads = torch.autograd.grad(yp, [t for t in leaves if t is not None], g)
    for got, want, name in zip(grads, [t for t in (gx64, gmc64, gms64) if t is not None], ("gx", "gmc", "gms")):
        assert_close(got, want, f"bam_gate {name}")
