"""Forward of the fused BAM gate: ``y = x · (1 + σ(mc ⊕ ms))`` (or ``x · σ(…)``) in one pass.

One program per [BLOCK_C × BLOCK_HW] tile of one sample: mc[n, c-block] and ms[n, hw-block]
are loaded once and broadcast, x is read once and y written once. The tile's fast axis is the
memory-contiguous one (hw for NCHW, c for channels_last), so accesses are 16 bytes wide
whenever the shapes allow it.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .gate_math import COMBINE_CODES, gate_preactivation, gate_sigmoid
from .layout import (
    NUM_WARPS,
    as_kernel_layout,
    dense,
    launch_guard,
    layout_of,
    tile_shape,
    tl_compute_dtype,
    x_scalars,
)
from .target import all_registers
from .utils import cdiv

# A forward program's tile holds this many bytes of x: two 16-byte accesses per thread of 4 warps.
# Small tiles, many programs: on an H200 this beat 8-32 KiB tiles at every ResNet-50 BAM shape
# (benchmarks/NOTES.md, tuning sweep 1).
FWD_TILE_BYTES = 4096


@triton.jit
def gate_fwd_kernel(
    x_ptr,  # (N, C, HW) by the strides below
    mc_ptr,  # (N, C) contiguous; unused without HAS_MC
    ms_ptr,  # (N, HW) contiguous; unused without HAS_MS
    y_ptr,  # like x
    C,
    HW,
    stride_n,  # x's and y's strides over (n, c, hw)
    stride_c,
    stride_hw,
    num_c_blocks,  # tiles along c and along hw per sample
    num_hw_blocks,
    COMBINE: tl.constexpr,  # COMBINE_CODES
    HAS_MC: tl.constexpr,
    HAS_MS: tl.constexpr,
    RESIDUAL: tl.constexpr,  # y = x · (1 + s), else x · s
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    INT64: tl.constexpr,  # 64-bit offsets
    COMPUTE: tl.constexpr,  # float32, or float64 for gradcheck
):
    pid = tl.program_id(0)
    pid_hw = pid % num_hw_blocks
    pid_c = (pid // num_hw_blocks) % num_c_blocks
    n = pid // (num_hw_blocks * num_c_blocks)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    if INT64:
        n = n.to(tl.int64)
        c = c.to(tl.int64)
        hw = hw.to(tl.int64)
    c_mask = c < C
    hw_mask = hw < HW
    mask = c_mask[:, None] & hw_mask[None, :]

    mc = tl.zeros([BLOCK_C], dtype=COMPUTE)
    ms = tl.zeros([BLOCK_HW], dtype=COMPUTE)
    if HAS_MC:
        mc = tl.load(mc_ptr + n * C + c, mask=c_mask, other=0.0).to(COMPUTE)
    if HAS_MS:
        ms = tl.load(ms_ptr + n * HW + hw, mask=hw_mask, other=0.0).to(COMPUTE)
    s = gate_sigmoid(gate_preactivation(mc[:, None], ms[None, :], COMBINE, HAS_MC, HAS_MS))

    offs = n * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if RESIDUAL:
        y = x.to(COMPUTE) * (1.0 + s)
    else:
        y = x.to(COMPUTE) * s
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


class FwdConfig(NamedTuple):
    """The forward's tuning knobs."""

    block_c: int
    block_hw: int
    num_warps: int = NUM_WARPS


def fwd_config(
    C: int, HW: int, channels_last: bool, element_size: int, tile_bytes: int = FWD_TILE_BYTES, max_fast: int = 1024
) -> FwdConfig:
    """The forward's heuristic: a ``tile_bytes`` tile, the fast axis up to ``max_fast`` lanes wide
    (``python -m benchmarks.tune`` varies both)."""
    return FwdConfig(*tile_shape(C, HW, channels_last, tile_bytes // element_size, max_fast))


class FwdPlan(NamedTuple):
    """What a forward launch derives from x's shape, layout and dtype and the config."""

    grid: tuple
    scalars: dict  # the kernel's scalar arguments by name
    meta: dict  # its block constexprs, num_warps and maxnreg


def fwd_plan(x: torch.Tensor, config: FwdConfig | None = None, force_int64: bool = False) -> FwdPlan:
    """The launch plan for ``x`` (N, C, H, W) with ``config`` (None: :func:`fwd_config`'s), cached.
    ``force_int64`` takes the 64-bit offset path whatever the size (tests)."""
    return _fwd_plan(x.shape, x.stride(), x.dtype, config, force_int64)


@functools.lru_cache(maxsize=1024)
def _fwd_plan(shape, strides, dtype, config, force_int64) -> FwdPlan:
    N, C, H, W = shape
    HW = H * W
    lay = layout_of(shape, strides)
    cfg = config or fwd_config(C, HW, lay.channels_last, dtype.itemsize)
    num_c_blocks, num_hw_blocks = cdiv(C, cfg.block_c), cdiv(HW, cfg.block_hw)
    return FwdPlan(
        grid=(N * num_c_blocks * num_hw_blocks,),
        scalars={**x_scalars(shape, lay), "num_c_blocks": num_c_blocks, "num_hw_blocks": num_hw_blocks},
        meta={
            "BLOCK_C": cfg.block_c,
            "BLOCK_HW": cfg.block_hw,
            "INT64": lay.int64 or force_int64,
            "COMPUTE": tl_compute_dtype(dtype),
            **all_registers(cfg.num_warps),
        },
    )


def gate_fwd(
    x: torch.Tensor,
    mc: torch.Tensor | None,
    ms: torch.Tensor | None,
    *,
    combine: str,
    residual: bool,
    config: FwdConfig | None = None,
    out: torch.Tensor | None = None,
    force_int64: bool = False,
) -> torch.Tensor:
    """The gated x: ``x · (1 + σ(mc ⊕ ms))`` (``x · σ(…)`` without ``residual``).

    Shapes: x (N, C, H, W), NCHW or channels_last taken as they are (any other layout is copied
    once); mc N·C and ms N·H·W elements in order, in any shape ((N, C), (N, C, 1, 1); (N, H, W),
    (N, 1, H, W)), or None, not both. ``out``: where to write y (x's shape and strides; tests pass
    a poisoned one); ``config``: block shape (None: :func:`fwd_config`); ``force_int64``: 64-bit
    offsets on any size. Returns y, x's shape, dtype and strides.
    """
    x = as_kernel_layout(x)
    y = torch.empty_like(x) if out is None else out
    if x.numel() == 0:
        return y
    plan = fwd_plan(x, config, force_int64)
    mc, ms = dense(mc), dense(ms)
    with launch_guard(gate_fwd_kernel, x.device) as launch:
        launch[plan.grid](
            x_ptr=x,
            mc_ptr=mc if mc is not None else ms,  # an absent map's pointer is never read
            ms_ptr=ms if ms is not None else mc,
            y_ptr=y,
            **plan.scalars,
            COMBINE=COMBINE_CODES[combine],
            HAS_MC=mc is not None,
            HAS_MS=ms is not None,
            RESIDUAL=residual,
            **plan.meta,
        )
    return y
