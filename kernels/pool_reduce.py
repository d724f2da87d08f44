"""The fused module's first pass over x: the channel branch's pooled means and the spatial
branch's 1×1 reduce convolution from one read of x.

    p[n, c]     = Σ_hw x[n, c, hw] / HW                 (N, C)   the channel branch's input
    z0[n, j, hw] = Σ_c Wr[j, c] · x[n, c, hw] + br[j]    (N, h, HW) the spatial branch's first map

One program per (sample n, block of positions): it walks the channels in chunks, accumulating
z0 for its positions with ``tl.dot`` (h padded to 16, masked at the store) and writing each
chunk's column sums as a partial of p. The partials, ``pool_part (N, hw blocks, C)``, are summed
in a fixed order afterwards (``pool_part.sum(1)``): no atomics, bitwise reproducible.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .dot import MIN_DOT, cast, dot, dot_meta
from .layout import (
    NUM_WARPS,
    hw_strides,
    launch_guard,
    layout_of,
    memory_format,
    stride_args,
    tl_compute_dtype,
    x_scalars,
)
from .target import Target, large_tiles, prefetches, staged_itemsize, target_of
from .utils import cdiv, compute_dtype, next_pow2

# Positions per program, at most.
MAX_BLOCK_HW = 64


class Tiles(NamedTuple):
    """A program's tile sizes for one kind of tl.dot (see :func:`bam_fused.kernels.target.large_tiles`)."""

    acc_bytes: int  # z0's accumulator [BLOCK_H × BLOCK_HW] in the compute dtype, at most
    block_c: int  # channels per chunk for 2-byte x (half that for wider x)
    num_warps: int


# Tensor-core dots: a [64 × 64] tile of x beside a 16 KiB fp32 accumulator ([64 × 64] at h = 64,
# C = 1024), four warps, as tuned on an H200 (benchmarks/NOTES.md).
LARGE_TILES = Tiles(16384, 64, NUM_WARPS)
# FMA dots hold whole rows and columns of their operands per thread: half the accumulator,
# 16-channel chunks (tl.dot's least), eight warps. With the large tiles fp32 spilled 12-172 B and
# fp64 up to 28 KB; with these, nothing on sm_75 to sm_120 at the ResNet-50 and CIFAR shapes.
SMALL_TILES = Tiles(8192, 16, 8)


def _tiles(dtype: torch.dtype, dot_dtype: torch.dtype, target: Target) -> tuple[Tiles, int]:
    """The tiles and z0's accumulator in values for x of ``dtype``, the reduce in ``dot_dtype``."""
    tiles = LARGE_TILES if large_tiles(dot_dtype, target) else SMALL_TILES
    return tiles, tiles.acc_bytes // compute_dtype(dtype).itemsize


# Shared memory beside the staged tl.dot operands: the channel sums' cross-warp reduction (bytes).
REDUCTION_SCRATCH = 2048


def _shared_bytes(block_h: int, block_c: int, block_hw: int, itemsize: int, target: Target) -> int:
    """Shared memory a program asks for at these blocks on ``target``, estimated (bytes): Wr's and
    x's chunks [BLOCK_H × BLOCK_C] and [BLOCK_C × BLOCK_HW] staged for tl.dot, two chunks' from sm_80
    on (the next one prefetched). Not a bound: over benchmarks/results/ptx-bounds.json the kernel
    used up to 1.21× it on sm_90 and 1.44× on sm_100 (within their shared memory; the survey checks)."""
    copies = 2 if prefetches(target) else 1
    return copies * (block_h * block_c + block_c * block_hw) * itemsize + REDUCTION_SCRATCH


def pool_reduce_fits(h: int, dtype: torch.dtype, dot_dtype: torch.dtype, target: Target) -> str | None:
    """Why a reduce to ``h`` channels does not fit one program (None when it does): at the
    narrowest position block (16) [BLOCK_H × 16] must stay within its accumulator, and its staged
    chunks within the target's shared memory."""
    tiles, acc_values = _tiles(dtype, dot_dtype, target)
    block_h = max(MIN_DOT, next_pow2(h))
    if block_h * MIN_DOT > acc_values:
        return f"pool_reduce holds z0 for at most {acc_values // MIN_DOT} reduce channels in {dtype}, not h={h}"
    itemsize = staged_itemsize(dot_dtype, compute_dtype(dtype), target)
    shared = _shared_bytes(block_h, _block_c(dtype, tiles), MIN_DOT, itemsize, target)
    if shared > target.shared_bytes:
        return (
            f"pool_reduce needs {shared} bytes of shared memory at h={h} in {dtype}, "
            f"more than sm_{target.arch}'s {target.shared_bytes}"
        )
    return None


def _block_c(dtype: torch.dtype, tiles: Tiles) -> int:
    """Channels per chunk: the tiles' for 2-byte x, half that for wider x (at least tl.dot's 16)."""
    return max(MIN_DOT, tiles.block_c if dtype.itemsize <= 2 else tiles.block_c // 2)


@triton.jit
def pool_reduce_kernel(
    x_ptr,  # (N, C, HW) by the strides below
    w_ptr,  # Wr (h, C) contiguous: the 1×1 convolution's weight; unused without REDUCE
    b_ptr,  # br (h); unused without REDUCE
    z_ptr,  # z0 (N, h, HW) by its strides, in DOT's dtype; unused without REDUCE
    pool_ptr,  # pool_part (N, hw_blocks, C) in COMPUTE; unused without POOL
    C,
    HW,
    h,
    stride_n,  # x's strides over (n, c, hw)
    stride_c,
    stride_hw,
    z_stride_n,  # z0's
    z_stride_c,
    z_stride_hw,
    hw_blocks,  # programs per sample
    POOL: tl.constexpr,  # write the pooled means' partials
    REDUCE: tl.constexpr,  # write z0
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_H: tl.constexpr,  # h padded to a power of 2 ≥ 16
    DOT: tl.constexpr,  # the convolution's input dtype (autocast's, or x's): kernels.dot's constexprs
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    INT64: tl.constexpr,  # 64-bit offsets
    COMPUTE: tl.constexpr,  # float32, or float64 for gradcheck
):
    pid = tl.program_id(0)
    pid_hw = pid % hw_blocks
    n = pid // hw_blocks
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    if INT64:
        n = n.to(tl.int64)
        hw = hw.to(tl.int64)
    hw_mask = hw < HW
    j = tl.arange(0, BLOCK_H)
    j_mask = j < h
    z = tl.zeros([BLOCK_H, BLOCK_HW], dtype=COMPUTE)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        mask = c_mask[:, None] & hw_mask[None, :]
        x = tl.load(x_ptr + n * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw, mask=mask, other=0.0)
        if POOL:
            # Divided here: a Python float 1/HW would be fp32 on a GPU and fp64 under the interpreter.
            col = tl.sum(x.to(COMPUTE), axis=1) / HW
            tl.store(pool_ptr + (n * hw_blocks + pid_hw) * C + c, col, mask=c_mask)
        if REDUCE:
            w = tl.load(w_ptr + j[:, None] * C + c[None, :], mask=j_mask[:, None] & c_mask[None, :], other=0.0)
            z = dot(w, x, z, DOT, PRECISION, EMULATE)
    if REDUCE:
        z += tl.load(b_ptr + j, mask=j_mask, other=0.0).to(COMPUTE)[:, None]
        z_offs = n * z_stride_n + j[:, None] * z_stride_c + hw[None, :] * z_stride_hw
        tl.store(z_ptr + z_offs, cast(z, DOT, EMULATE), mask=j_mask[:, None] & hw_mask[None, :])


class PoolReducePlan(NamedTuple):
    grid: tuple
    scalars: dict  # pool_reduce_kernel's scalar arguments by name, but z0's strides
    meta: dict


@functools.lru_cache(maxsize=1024)
def pool_reduce_plan(
    shape: tuple, strides: tuple, dtype: torch.dtype, h: int, dot_dtype: torch.dtype, target: Target
) -> PoolReducePlan:
    """The launch plan for x of ``shape`` (N, C, H, W), ``strides`` and ``dtype``, a reduce to ``h``
    channels computed in ``dot_dtype``, on ``target``; cached."""
    N, C, H, W = shape
    block_h = max(MIN_DOT, next_pow2(h))
    tiles, acc_values = _tiles(dtype, dot_dtype, target)
    block_c = _block_c(dtype, tiles)
    itemsize = staged_itemsize(dot_dtype, compute_dtype(dtype), target)
    block_hw = max(MIN_DOT, min(MAX_BLOCK_HW, next_pow2(H * W), acc_values // block_h))
    # Narrower position blocks where the staged chunks would pass the target's shared memory.
    while block_hw > MIN_DOT and _shared_bytes(block_h, block_c, block_hw, itemsize, target) > target.shared_bytes:
        block_hw //= 2
    hw_blocks = cdiv(H * W, block_hw)
    lay = layout_of(shape, strides)
    return PoolReducePlan(
        grid=(N * hw_blocks,),
        scalars={**x_scalars(shape, lay), "h": h, "hw_blocks": hw_blocks},
        meta={
            "BLOCK_C": block_c,
            "BLOCK_HW": block_hw,
            "BLOCK_H": block_h,
            **dot_meta(dot_dtype),
            "INT64": lay.int64,
            "COMPUTE": tl_compute_dtype(dtype),
            "num_warps": tiles.num_warps,
        },
    )


def pool_reduce(
    x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, *, pool: bool, dot_dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(pool_part, z0)`` from one read of x; either is None when not asked for (``pool`` False,
    ``w`` None).

    Shapes: x (N, C, H, W), NCHW or channels_last; w (h, C, 1, 1) or (h, C) contiguous, b (h).
    Returns pool_part (N, hw blocks, C) in x's compute dtype, whose sum over dim 1 is the mean
    of x over H×W, and z0 (N, h, H, W) in ``dot_dtype`` and x's memory format.
    """
    N, C, H, W = x.shape
    h = w.shape[0] if w is not None else 0
    lay = layout_of(x.shape, x.stride())
    plan = pool_reduce_plan(x.shape, x.stride(), x.dtype, h, dot_dtype, target_of(x.device))
    pool_part = (
        torch.empty(N, plan.scalars["hw_blocks"], C, device=x.device, dtype=compute_dtype(x.dtype)) if pool else None
    )
    z0 = torch.empty((N, h, H, W), device=x.device, dtype=dot_dtype, memory_format=memory_format(lay)) if h else None
    if x.numel() == 0 or (pool_part is None and z0 is None):
        return pool_part, z0
    out = z0 if z0 is not None else pool_part  # stands in for the pointers the kernel does not read
    with launch_guard(pool_reduce_kernel, x.device) as launch:
        launch[plan.grid](
            x_ptr=x,
            w_ptr=w if w is not None else out,
            b_ptr=b if b is not None else out,
            z_ptr=out,
            pool_ptr=pool_part if pool_part is not None else out,
            **plan.scalars,
            **stride_args("z", hw_strides(z0) if z0 is not None else None),
            POOL=pool,
            REDUCE=z0 is not None,
            **plan.meta,
        )
    return pool_part, z0
