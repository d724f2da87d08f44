"""The fused module's last pass: x's one gradient and the 1×1 reduce convolution's weight gradient.

    gx[n, c, hw] = g · (1 + s)  +  g_p[n, c] / HW  +  Σ_j Wr[j, c] · g_z0[n, j, hw]
                   (the gate)      (the pooling)     (the 1×1 reduce convolution)
    gWr[j, c]    = Σ_{n, hw} g_z0[n, j, hw] · x[n, c, hw]        gbr[j] = Σ_{n, hw} g_z0[n, j, hw]

with s = σ(mc ⊕ ms) recomputed from the maps (``g · s`` without the residual). One program per
(block of channels, split of the positions): it walks its positions in chunks, reads g, x and
g_z0 once, writes gx once, and accumulates gWr for its channels in registers. Each split leaves
its sums as partials, ``gw_part (splits, h, C)`` and ``gb_part (splits, h)`` (the latter from the
programs of the first channel block), which ``input_grad_reduce_kernel`` sums in a fixed order:
no atomics, bitwise reproducible.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .dot import MIN_DOT, dot, dot_meta
from .gate_math import COMBINE_CODES, gate_preactivation, gate_sigmoid
from .layout import (
    NUM_WARPS,
    hw_addressed,
    hw_strides,
    launch_guard,
    layout_of,
    stride_args,
    tl_compute_dtype,
    x_scalars,
)
from .target import Target, all_registers, large_tiles, staged_itemsize, target_of
from .utils import cdiv, compute_dtype, next_pow2

# Programs per SM input_grad's split of the positions aims for: half gate_bwd's, since each split
# here adds h·C partial sums of gWr to write and reduce (not tuned on a GPU).
INPUT_GRAD_PROGRAMS_PER_SM = 2
# Outputs (of gWr and gbr) per program of input_grad_reduce_kernel.
REDUCE_BLOCK = 1024
# Wrᵀ [BLOCK_C × BLOCK_H] and gWr's accumulator [BLOCK_H × BLOCK_C] stay in registers up to this
# many reduce channels: at 128, bf16 spilled on sm_80 and passed sm_86's shared memory, fp64 spilled.
MAX_BLOCK_H = 64


class Tiles(NamedTuple):
    """A program's tile sizes for one kind of tl.dot (see :func:`bam_fused.kernels.target.large_tiles`)."""

    block_c: int  # channels per program
    block_p: int  # positions per chunk for 2-byte x (half that for wider x, never below 16)
    num_warps: int


# Tensor-core dots: [64 × 64] tiles of g, x, s and gx at once, eight warps (four spilled in fp32).
LARGE_TILES = Tiles(64, 64, 8)
# FMA dots hold whole rows and columns of their operands per thread (Wrᵀ's loaded once for the walk):
# [16 × 16] tiles (with [64 × 32] ones fp32 spilled 8-784 B and fp64 up to 23 KB), two warps, so
# that each thread moves 16 bytes of g, x and gx at once (eight warps: one value, no 128-bit access).
SMALL_TILES = Tiles(16, 16, 2)


# Shared memory beside the staged tl.dot operands: the cross-warp reductions (bytes).
REDUCTION_SCRATCH = 2048


def _shared_bytes(block_h: int, block_c: int, block_p: int, itemsize: int) -> int:
    """Shared memory a program asks for at these blocks, estimated (bytes): g_z0's chunk
    [BLOCK_H × BLOCK_P] twice (the next one prefetched), x's [BLOCK_P × BLOCK_C] three times (its
    transpose for gWr's dot besides), and Wrᵀ [BLOCK_C × BLOCK_H], staged for tl.dot. Not a bound:
    over benchmarks/results/ptx-bounds.json the kernel used up to 1.19-1.28× it on sm_80-sm_120 and
    2.94× on sm_100 (within their shared memory; the survey checks)."""
    return (2 * block_h * block_p + 3 * block_p * block_c + block_c * block_h) * itemsize + REDUCTION_SCRATCH


def _tiles(dot_dtype: torch.dtype, target: Target) -> Tiles:
    return LARGE_TILES if large_tiles(dot_dtype, target) else SMALL_TILES


def _block_p(dtype: torch.dtype, tiles: Tiles) -> int:
    """Positions per chunk: the tiles' for 2-byte x, half that for wider x (at least tl.dot's 16)."""
    return max(MIN_DOT, tiles.block_p if dtype.itemsize <= 2 else tiles.block_p // 2)


def input_grad_fits(h: int, dtype: torch.dtype, dot_dtype: torch.dtype, target: Target) -> str | None:
    """Why a reduce convolution to ``h`` channels, for x of ``dtype`` and the convolution in
    ``dot_dtype``, does not fit a program on ``target`` (None when it does): its registers hold
    Wrᵀ and gWr's accumulator up to :data:`MAX_BLOCK_H` channels, its shared memory the staged tiles."""
    block_h = max(MIN_DOT, next_pow2(h))
    if block_h > MAX_BLOCK_H:
        return f"input_grad holds the reduce convolution's weight for at most {MAX_BLOCK_H} channels, not h={h}"
    tiles = _tiles(dot_dtype, target)
    itemsize = staged_itemsize(dot_dtype, compute_dtype(dtype), target)
    shared = _shared_bytes(block_h, tiles.block_c, MIN_DOT, itemsize)
    if shared > target.shared_bytes:
        return (
            f"input_grad needs {shared} bytes of shared memory at h={h} in {dtype}, "
            f"more than sm_{target.arch}'s {target.shared_bytes}"
        )
    return None


@triton.jit
def input_grad_kernel(
    g_ptr,  # (N, C, HW) by its own strides
    x_ptr,  # (N, C, HW) by the strides below
    gx_ptr,  # out: like x
    mc_ptr,  # (N, C) contiguous; unused without HAS_MC
    ms_ptr,  # (N, HW) contiguous; unused without HAS_MS
    gp_ptr,  # (N, C) ∂L/∂(pooled mean), compute dtype; unused without HAS_POOL
    gz_ptr,  # (N, h, HW) ∂L/∂z0 by its strides; unused without HAS_REDUCE
    w_ptr,  # Wr (h, C) contiguous; unused without HAS_REDUCE
    part_ptr,  # out: gw_part (splits, h, C) then gb_part (splits, h), compute dtype
    C,
    HW,
    h,
    stride_n,  # x's and gx's strides over (n, c, hw)
    stride_c,
    stride_hw,
    g_stride_n,  # g's
    g_stride_c,
    g_stride_hw,
    z_stride_n,  # g_z0's
    z_stride_c,
    z_stride_hw,
    c_blocks,  # programs along the channels
    per_split,  # positions (n·HW + hw) per split, whole chunks
    total,  # N·HW
    gb_part_offset,  # elements of part_ptr before gb_part
    COMBINE: tl.constexpr,
    HAS_MC: tl.constexpr,
    HAS_MS: tl.constexpr,
    RESIDUAL: tl.constexpr,
    HAS_POOL: tl.constexpr,  # the channel branch: add g_p / HW
    HAS_REDUCE: tl.constexpr,  # the spatial branch: add Wrᵀ · g_z0, accumulate gWr and gbr
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,  # h padded to a power of 2 ≥ 16
    DOT: tl.constexpr,  # the convolution's dtype (autocast's, or x's): kernels.dot's constexprs
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    INT64: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = pid % c_blocks
    pid_s = pid // c_blocks
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    j = tl.arange(0, BLOCK_H)
    j_mask = j < h
    if HAS_REDUCE:
        # Wrᵀ for this program's channels, loaded once: [BLOCK_C × BLOCK_H].
        wt = tl.load(w_ptr + j[None, :] * C + c[:, None], mask=c_mask[:, None] & j_mask[None, :], other=0.0)
    gw = tl.zeros([BLOCK_H, BLOCK_C], dtype=COMPUTE)
    gb = tl.zeros([BLOCK_H], dtype=COMPUTE)
    start = pid_s * per_split
    end = tl.minimum(total, start + per_split)
    for q0 in range(start, end, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        if INT64:
            q = q.to(tl.int64)
        q_mask = q < end
        n = q // HW
        hw = q - n * HW
        mask = c_mask[:, None] & q_mask[None, :]
        offs = n[None, :] * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw
        g_offs = n[None, :] * g_stride_n + c[:, None] * g_stride_c + hw[None, :] * g_stride_hw
        g = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(COMPUTE)
        mc = tl.zeros([BLOCK_C, BLOCK_P], dtype=COMPUTE)
        ms = tl.zeros([BLOCK_C, BLOCK_P], dtype=COMPUTE)
        if HAS_MC:
            mc = tl.load(mc_ptr + n[None, :] * C + c[:, None], mask=mask, other=0.0).to(COMPUTE)
        if HAS_MS:
            ms = tl.broadcast_to(tl.load(ms_ptr + q, mask=q_mask, other=0.0).to(COMPUTE)[None, :], [BLOCK_C, BLOCK_P])
        s = gate_sigmoid(gate_preactivation(mc, ms, COMBINE, HAS_MC, HAS_MS))
        if RESIDUAL:
            gx = g * (1.0 + s)
        else:
            gx = g * s
        if HAS_POOL:
            gx += tl.load(gp_ptr + n[None, :] * C + c[:, None], mask=mask, other=0.0).to(COMPUTE) / HW
        if HAS_REDUCE:
            z_offs = n[None, :] * z_stride_n + j[:, None] * z_stride_c + hw[None, :] * z_stride_hw
            gz = tl.load(gz_ptr + z_offs, mask=j_mask[:, None] & q_mask[None, :], other=0.0)
            gx = dot(wt, gz, gx, DOT, PRECISION, EMULATE)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            gw = dot(gz, tl.trans(x), gw, DOT, PRECISION, EMULATE)
            gb += tl.sum(gz.to(COMPUTE), axis=1)
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if HAS_REDUCE:
        tl.store(part_ptr + (pid_s * h + j[:, None]) * C + c[None, :], gw, mask=j_mask[:, None] & c_mask[None, :])
        if pid_c == 0:
            tl.store(part_ptr + gb_part_offset + pid_s * h + j, gb, mask=j_mask)


@triton.jit
def input_grad_reduce_kernel(
    part_ptr,  # gw_part (splits, h·C) then gb_part (splits, h), compute dtype
    out_ptr,  # gWr (h·C) and gbr (h) at their offsets, in the parameters' dtype
    splits,
    hc,  # h·C
    h,
    gb_part_offset,
    gw_offset,  # elements of out_ptr before gWr
    gb_offset,  # and before gbr
    BLOCK: tl.constexpr,
):
    """gWr = Σ_s gw_part[s], gbr = Σ_s gb_part[s], s in order; the programs after gWr's sum gbr."""
    pid = tl.program_id(0)
    gw_programs = tl.cdiv(hc, BLOCK)
    if pid < gw_programs:
        o = pid * BLOCK + tl.arange(0, BLOCK)
        mask = o < hc
        acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
        for s in range(splits):
            acc += tl.load(part_ptr + s * hc + o, mask=mask, other=0.0)
        tl.store(out_ptr + gw_offset + o, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        o = (pid - gw_programs) * BLOCK + tl.arange(0, BLOCK)
        mask = o < h
        acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
        for s in range(splits):
            acc += tl.load(part_ptr + gb_part_offset + s * h + o, mask=mask, other=0.0)
        tl.store(out_ptr + gb_offset + o, acc.to(out_ptr.dtype.element_ty), mask=mask)


class InputGradPlan(NamedTuple):
    grid: tuple
    splits: int
    part_numel: int  # gw_part then gb_part
    scalars: dict  # input_grad_kernel's scalar arguments by name, but g's and g_z0's strides
    meta: dict
    reduce_grid: tuple
    reduce_scalars: dict  # input_grad_reduce_kernel's by name, but the offsets into its out


def input_grad_plan(shape, strides, dtype, device, h: int, dot_dtype) -> InputGradPlan:
    """The launch plan for x of ``shape`` (N, C, H, W), ``strides``, ``dtype`` on ``device``, a
    reduce convolution to ``h`` channels (0: no spatial branch) in ``dot_dtype``; cached."""
    return _input_grad_plan(shape, strides, dtype, target_of(device), h, dot_dtype)


@functools.lru_cache(maxsize=1024)
def _input_grad_plan(shape, strides, dtype, target: Target, h: int, dot_dtype) -> InputGradPlan:
    N, C, H, W = shape
    total = N * H * W
    tiles = _tiles(dot_dtype, target)
    block_h = max(MIN_DOT, next_pow2(h))
    block_p = _block_p(dtype, tiles)
    itemsize = staged_itemsize(dot_dtype, compute_dtype(dtype), target)
    # Shorter chunks where the staged tiles would pass the target's shared memory.
    while block_p > MIN_DOT and _shared_bytes(block_h, tiles.block_c, block_p, itemsize) > target.shared_bytes:
        block_p //= 2
    c_blocks = cdiv(C, tiles.block_c)
    chunks = cdiv(total, block_p)
    # Enough programs to fill the GPU, each split at least one chunk.
    splits = max(1, min(chunks, cdiv(INPUT_GRAD_PROGRAMS_PER_SM * target.sms, c_blocks)))
    per_split = cdiv(chunks, splits) * block_p
    splits = cdiv(total, per_split) if total else 0
    gb_part_offset = splits * h * C
    lay = layout_of(shape, strides)
    return InputGradPlan(
        grid=(c_blocks * splits,),
        splits=splits,
        part_numel=gb_part_offset + splits * h,
        scalars={
            **x_scalars(shape, lay),
            "h": h,
            "c_blocks": c_blocks,
            "per_split": per_split,
            "total": total,
            "gb_part_offset": gb_part_offset,
        },
        meta={
            "BLOCK_C": tiles.block_c,
            "BLOCK_P": block_p,
            "BLOCK_H": block_h,
            **dot_meta(dot_dtype),
            "INT64": lay.int64,
            "COMPUTE": tl_compute_dtype(dtype),
            **all_registers(tiles.num_warps),
        },
        reduce_grid=(cdiv(h * C, REDUCE_BLOCK) + cdiv(h, REDUCE_BLOCK),),
        reduce_scalars={"splits": splits, "hc": h * C, "h": h, "gb_part_offset": gb_part_offset},
    )


def input_grad(g, x, mc, ms, gp, gz, w, *, combine: str, residual: bool, grads=None, grad_offsets=(0, 0), part=None):
    """gx, and gWr and gbr written into ``grads`` at ``grad_offsets`` (when ``gz`` is given).

    Shapes: g and x (N, C, H, W) (x NCHW or channels_last, g in any layout); mc (N, C) and
    ms (N, H·W) (their values first in any contiguous tensor) or None, not both; gp (N, C)
    ∂L/∂(pooled mean) or None; gz (N, h, H, W) ∂L/∂z0 and w (h, C) the reduce convolution's
    weight, or both None; ``grads`` a 1-D tensor in the parameters' dtype; ``part`` a buffer of
    at least :attr:`InputGradPlan.part_numel` in x's compute dtype for the partial sums (None:
    allocated here). Returns gx, x's shape, dtype and strides.
    """
    C = x.shape[1]
    h = w.shape[0] if w is not None else 0
    dot_dtype = gz.dtype if gz is not None else x.dtype
    plan = input_grad_plan(x.shape, x.stride(), x.dtype, x.device, h, dot_dtype)
    gx = torch.empty_like(x)
    if part is None and gz is not None:
        part = torch.empty(plan.part_numel, device=x.device, dtype=compute_dtype(x.dtype))
    if plan.splits == 0 or C == 0:
        if grads is not None and gz is not None:
            grads[grad_offsets[0] : grad_offsets[0] + h * C].zero_()
            grads[grad_offsets[1] : grad_offsets[1] + h].zero_()
        return gx
    g, g_strides = hw_addressed(g, x)
    small = mc if mc is not None else ms  # stands in for the pointers the kernel does not read
    with launch_guard(input_grad_kernel, x.device) as launch:
        launch[plan.grid](
            g_ptr=g,
            x_ptr=x,
            gx_ptr=gx,
            mc_ptr=small if mc is None else mc,
            ms_ptr=small if ms is None else ms,
            gp_ptr=gp if gp is not None else small,
            gz_ptr=gz if gz is not None else small,
            w_ptr=w if w is not None else small,
            part_ptr=part if part is not None else small,
            **plan.scalars,
            **stride_args("g", g_strides),
            **stride_args("z", hw_strides(gz) if gz is not None else None),
            COMBINE=COMBINE_CODES[combine],
            HAS_MC=mc is not None,
            HAS_MS=ms is not None,
            RESIDUAL=residual,
            HAS_POOL=gp is not None,
            HAS_REDUCE=gz is not None,
            **plan.meta,
        )
    if gz is not None:
        gw_offset, gb_offset = grad_offsets
        with launch_guard(input_grad_reduce_kernel, x.device) as launch:
            launch[plan.reduce_grid](
                part_ptr=part,
                out_ptr=grads,
                **plan.reduce_scalars,
                gw_offset=gw_offset,
                gb_offset=gb_offset,
                BLOCK=REDUCE_BLOCK,
                num_warps=NUM_WARPS,
            )
    return gx
