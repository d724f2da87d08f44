"""Plans per target: the kernels' one-program and shared-memory bounds follow the dtype, the
shapes and the GPU's limits, and a call that cannot fit takes the per-op path with its reason
(the PTX survey, tests/test_ptx_report.py, checks the compiled kernels keep within them)."""

import pytest
import torch

from bam_fused import FusedBAM
from bam_fused.fused_path import fused_path_blocker, plan_fused_call
from bam_fused.kernels import channel_mlp, input_grad, pool_reduce
from bam_fused.kernels.target import SHARED_BYTES, Target, arch_target, planned_for, staged_itemsize

MIN_DOT = channel_mlp.MIN_DOT
HALF = torch.bfloat16, torch.float32  # (branch dtype, compute dtype) of a bf16 module


def _mlp_shared(N, C, h, target, dtypes=HALF):
    plan = channel_mlp.mlp_plan(N, C, h, *dtypes, target)
    m = plan.meta
    itemsize = staged_itemsize(*dtypes, target)
    return m["BLOCK_C"], channel_mlp._shared_bytes(m["BLOCK_N"], m["BLOCK_H"], m["BLOCK_C"], itemsize, target)


def test_less_shared_memory_narrows_the_channel_chunk_then_routes():
    """bam3 of a ResNet-50 (N=64, C=1024, h=64) in bf16, planned as on an sm_80 with less and less
    shared memory: the chunk halves to fit, and where even 16 channels do not, the call is routed
    with the reason."""
    wide, wide_bytes = _mlp_shared(64, 1024, 64, arch_target(80))
    assert wide == 64 and wide_bytes <= SHARED_BYTES[80]
    small = Target(80, 80000, 132)
    narrow, narrow_bytes = _mlp_shared(64, 1024, 64, small)
    assert MIN_DOT <= narrow < wide and narrow_bytes <= small.shared_bytes
    assert channel_mlp.mlp_fits(64, 64, *HALF, small) is None
    tiny = Target(80, 16384, 132)
    why = channel_mlp.mlp_fits(64, 64, *HALF, tiny)
    assert why is not None and "shared memory" in why and "16384" in why


def test_reduce_kernels_route_where_their_tiles_cannot_fit():
    tiny = Target(80, 8192, 132)
    assert pool_reduce.pool_reduce_fits(64, torch.bfloat16, torch.bfloat16, arch_target(75)) is None
    assert "shared memory" in pool_reduce.pool_reduce_fits(64, torch.bfloat16, torch.bfloat16, tiny)
    assert input_grad.input_grad_fits(64, torch.float64, torch.float64, arch_target(75)) is None
    assert "shared memory" in input_grad.input_grad_fits(64, torch.float64, torch.float64, tiny)
    assert "at most 64 channels" in input_grad.input_grad_fits(128, torch.bfloat16, torch.bfloat16, arch_target(90))


@pytest.mark.parametrize(
    ("arch", "dtype", "fits"),
    [(90, torch.bfloat16, True), (80, torch.float32, True), (75, torch.bfloat16, False), (90, torch.float64, False)],
)
def test_the_plan_follows_the_target(arch, dtype, fits):
    """bam3 of a ResNet-50 planned on meta tensors for an arch: bf16 on tensor cores from sm_80;
    on sm_75 (bf16 in software: small tiles) and in float64 its batch tile passes one program's
    registers, and the call names why it takes the per-op path."""
    module = FusedBAM(1024, 16).to(device="meta", dtype=dtype)
    x = torch.empty(64, 1024, 14, 14, device="meta", dtype=dtype)
    with planned_for(arch_target(arch)):
        planned = plan_fused_call(module, x)
    if fits:
        assert not isinstance(planned, str), planned
    else:
        assert isinstance(planned, str) and "batch of 64 at h=64" in planned, planned


def test_fused_path_blocker_names_why_a_batch_does_not_fit():
    """On CPU tensors (the interpreter plans as sm_80 would): float64 holds a batch tile of 1024
    values, so 128 samples at h=16 take the per-op path, and the blocker says so."""
    module = FusedBAM(256, 16).double()
    why = fused_path_blocker(module, torch.randn(128, 256, 2, 2, dtype=torch.float64))
    assert why is not None and "batch of 128 at h=16" in why
    assert fused_path_blocker(module, torch.randn(64, 256, 2, 2, dtype=torch.float64)) is None
