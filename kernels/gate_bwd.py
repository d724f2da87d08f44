"""Backward of the fused BAM gate in one pass over g and x, deterministic.

    gx        = g · (1 + s)          (g · s without the residual)
    t         = g · x · s · (1 − s)  = ∂L/∂a
    gmc[n, c] = Σ_hw t · ∂a/∂mc      gms[n, hw] = Σ_c t · ∂a/∂ms

Each program owns one block of the tile's fast (contiguous) axis and walks a split of the
slow axis in chunks: hw-blocks walking channels for NCHW, c-blocks walking positions for
channels_last. Per chunk it writes gx and the chunk's sum along the fast axis, which stays
inside a warp; the sum along the slow axis is accumulated element-wise in registers and
reduced across warps once, after the walk, so no barrier stalls the loop. Both sums leave
the kernel as partials,

    gmc_part [N, C, P_hw]   (P_hw: hw-blocks for NCHW, hw-splits for channels_last)
    gms_part [N, P_c, HW]   (P_c:  c-splits for NCHW,  c-blocks for channels_last)

and ``gate_bwd_reduce_kernel`` sums both in one launch in a fixed order: bitwise
reproducible, no float atomics. The split fills the GPU at small maps.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .gate_math import COMBINE_CODES, gate_combine_grads, gate_preactivation, gate_sigmoid
from .layout import cdiv, compute_dtype, config_key, layout_of, multiprocessor_count, tile_shape

# Bytes of x per chunk of the walk (two inputs and an fp32 accumulator live at once), and the
# programs per SM the split aims for. Both from tuning sweep 2 on an H200 (benchmarks/NOTES.md):
# 4 KiB chunks and 4 programs/SM had the best mean and the best worst case over the six
# ResNet-50 shape/layouts among 8/16 KiB chunks, 4/8 warps, 4/16 programs per SM.
BWD_TILE_BYTES = 4096
PROGRAMS_PER_SM = 4


@triton.jit
def gate_bwd_kernel(
    g_ptr, x_ptr, mw_ptr, mf_ptr, gx_ptr, gw_part_ptr, gf_part_ptr,
    walk_size, fast_size,
    stride_n, stride_w, stride_f,
    gw_stride_n, gw_stride_w, gw_stride_b,
    gf_stride_n, gf_stride_f, gf_stride_s,
    num_blocks, num_splits, per_split,
    COMBINE: tl.constexpr, HAS_MW: tl.constexpr, HAS_MF: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_F: tl.constexpr, INT64: tl.constexpr, COMPUTE: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Stage one for (sample n, block pid_b of the fast axis f, split pid_s of the walked axis w).

    w is the channels for NCHW and the positions for channels_last, f the other axis; mw and
    mf are the maps along them (mc and ms, or ms and mc). The gate is symmetric in its two
    maps (a = mc ⊕ ms, and each map's share of t), so one body serves both layouts. Partials
    go through strides, gw_part[n, w, block] and gf_part[n, f, split], so that each layout
    keeps the (N, C, P_hw) / (N, P_c, HW) arrays the reduction reads.
    """
    pid = tl.program_id(0)
    pid_b = pid % num_blocks
    pid_s = (pid // num_blocks) % num_splits
    n = pid // (num_blocks * num_splits)
    f = pid_b * BLOCK_F + tl.arange(0, BLOCK_F)
    if INT64:
        n = n.to(tl.int64)
        f = f.to(tl.int64)
    f_mask = f < fast_size
    mf = tl.zeros([BLOCK_F], dtype=COMPUTE)
    if HAS_MF:
        mf = tl.load(mf_ptr + n * fast_size + f, mask=f_mask, other=0.0).to(COMPUTE)
    gf_acc = tl.zeros([BLOCK_W, BLOCK_F], dtype=COMPUTE)
    start = pid_s * per_split
    end = tl.minimum(walk_size, start + per_split)
    # NUM_STAGES > 1 has Triton's pipeliner prefetch the next chunks' g and x into shared memory
    # (cp.async), so more bytes are in flight per program than one chunk's registers hold.
    for w0 in tl.range(start, end, BLOCK_W, num_stages=NUM_STAGES):
        w = w0 + tl.arange(0, BLOCK_W)
        if INT64:
            w = w.to(tl.int64)
        w_mask = w < end
        mw = tl.zeros([BLOCK_W], dtype=COMPUTE)
        if HAS_MW:
            mw = tl.load(mw_ptr + n * walk_size + w, mask=w_mask, other=0.0).to(COMPUTE)
        mask = w_mask[:, None] & f_mask[None, :]
        offs = n * stride_n + w[:, None] * stride_w + f[None, :] * stride_f
        s = gate_sigmoid(gate_preactivation(mw[:, None], mf[None, :], COMBINE, HAS_MW, HAS_MF))
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        if RESIDUAL:
            gx = g * (1.0 + s)
        else:
            gx = g * s
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        # Masked lanes must add exactly 0: an inf in the other map would make 0 · inf = NaN there.
        t = tl.where(mask, g * x * s * (1.0 - s), 0.0)
        if HAS_MW and HAS_MF:
            t_w, t_f = gate_combine_grads(t, mw[:, None], mf[None, :], COMBINE)
        else:
            t_w = t
            t_f = t
        if HAS_MW:  # summed along f inside a warp: the fast axis is at most a warp wide
            gw = tl.sum(t_w, axis=1)
            tl.store(gw_part_ptr + n * gw_stride_n + w * gw_stride_w + pid_b * gw_stride_b, gw, mask=w_mask)
        if HAS_MF:  # summed along w once, after the walk: no barrier inside the loop
            gf_acc += t_f
    if HAS_MF:
        gf = tl.sum(gf_acc, axis=0)
        tl.store(gf_part_ptr + n * gf_stride_n + f * gf_stride_f + pid_s * gf_stride_s, gf, mask=f_mask)


@triton.jit
def _sum_middle_axis(part_ptr, out_ptr, start, total, P, B, BLOCK: tl.constexpr):
    """out[a, b] = Σ_p part[a, p, b] for the BLOCK flat outputs from ``start``, p in order."""
    o = start + tl.arange(0, BLOCK)
    mask = o < total
    a = o // B
    base = a * P * B + (o - a * B)
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for p in range(P):
        acc += tl.load(part_ptr + base + p * B, mask=mask, other=0.0)
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gate_bwd_reduce_kernel(
    gmc_part_ptr, gmc_ptr, gmc_total, p_hw, gmc_programs,
    gms_part_ptr, gms_ptr, gms_total, p_c, HW,
    HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Stage two: both partial sums reduced in one launch, in a fixed order, cast to the maps' dtypes.

    Programs [0, gmc_programs) sum gmc_part [N·C, P_hw] over its last axis; the rest sum
    gms_part [N, P_c, HW] over its middle one.
    """
    pid = tl.program_id(0)
    if HAS_MC and pid < gmc_programs:
        _sum_middle_axis(gmc_part_ptr, gmc_ptr, pid * BLOCK, gmc_total, p_hw, 1, BLOCK)
    elif HAS_MS:
        _sum_middle_axis(gms_part_ptr, gms_ptr, (pid - gmc_programs) * BLOCK, gms_total, p_c, HW, BLOCK)


def bwd_config(N: int, C: int, HW: int, channels_last: bool, element_size: int, num_sms: int,
               tile_bytes: int = BWD_TILE_BYTES) -> dict:  # fmt: skip
    """Block shape, split of the walked axis and warps for the backward.

    The fast axis gets at most one warp's width of 16-byte vectors (256 bf16, 128 fp32 lanes)
    so that the per-chunk sum along it never leaves a warp; the walked axis gets the rest of a
    BWD_TILE_BYTES chunk. The split grows until there are PROGRAMS_PER_SM programs per SM,
    never below one chunk per split. NUM_STAGES stays 1 (no prefetch into shared memory) until
    a GPU sweep (``python -m benchmarks.tune``, which varies ``tile_bytes`` too) shows more win.
    """
    tile_elems = tile_bytes // element_size
    warp_width = 32 * max(1, 16 // element_size)
    block_c, block_hw = tile_shape(C, HW, channels_last, tile_elems, max_fast=warp_width)
    walk_c = not channels_last
    blocks = cdiv(HW, block_hw) if walk_c else cdiv(C, block_c)
    chunks = cdiv(C, block_c) if walk_c else cdiv(HW, block_hw)
    splits = max(1, min(chunks, cdiv(PROGRAMS_PER_SM * num_sms, max(N * blocks, 1))))
    return {"BLOCK_C": block_c, "BLOCK_HW": block_hw, "SPLITS": splits, "num_warps": 4, "NUM_STAGES": 1}


class BwdPlan(NamedTuple):
    """Everything a backward launch derives from x's shape, layout, dtype and device and the config."""

    walk_c: bool  # NCHW: hw-blocks walk channels; channels_last: c-blocks walk positions
    blocks: int  # blocks along the fast axis
    splits: int  # pieces of the walked axis, whole chunks each, none empty
    per_split: int  # elements of the walked axis per split
    gmc_part_shape: tuple  # (N, C, P_hw)
    gms_part_shape: tuple  # (N, P_c, H·W)
    grid: tuple
    args: tuple  # the kernel's scalar arguments, in order after the pointers
    meta: dict  # its layout constexprs and num_warps


def bwd_plan(x, config: dict | None = None) -> BwdPlan:
    """The launch plan for ``x`` (N, C, H, W) with ``config`` (None: :func:`bwd_config`'s), cached:
    a training step asks for the same few plans on every call."""
    return _bwd_plan(x.shape, x.stride(), x.dtype, x.device, config_key(config))


@functools.lru_cache(maxsize=1024)
def _bwd_plan(shape, strides, dtype, device, config_items) -> BwdPlan:
    N, C, H, W = shape
    HW = H * W
    lay = layout_of(shape, strides)
    if config_items is None:
        cfg = bwd_config(N, C, HW, lay.channels_last, dtype.itemsize, multiprocessor_count(device))
    else:
        cfg = dict(config_items)
    walk_c = not lay.channels_last
    c_axis, hw_axis = (C, cfg["BLOCK_C"], lay.stride_c), (HW, cfg["BLOCK_HW"], lay.stride_hw)
    (walk, block_w, stride_w), (fast, block_f, stride_f) = (c_axis, hw_axis) if walk_c else (hw_axis, c_axis)
    per_split = max(1, cdiv(walk, block_w) // max(1, cfg["SPLITS"])) * block_w
    blocks, splits = cdiv(fast, block_f), cdiv(walk, per_split)
    # The kernel's gw_part[n, w, block] and gf_part[n, f, split], as strides into the contiguous
    # gmc_part (N, C, P_hw) and gms_part (N, P_c, HW).
    if walk_c:
        gmc_part, gms_part = (N, C, blocks), (N, splits, HW)
        part_strides = (C * blocks, blocks, 1, splits * HW, 1, HW)
    else:
        gmc_part, gms_part = (N, C, splits), (N, blocks, HW)
        part_strides = (blocks * HW, 1, HW, C * splits, splits, 1)
    return BwdPlan(
        walk_c, blocks, splits, per_split, gmc_part, gms_part,
        grid=(N * blocks * splits,),
        args=(walk, fast, lay.stride_n, stride_w, stride_f, *part_strides, blocks, splits, per_split),
        meta={"BLOCK_W": block_w, "BLOCK_F": block_f, "INT64": cfg.get("INT64", lay.int64),
              "COMPUTE": compute_dtype(dtype), "NUM_STAGES": cfg.get("NUM_STAGES", 1),
              "num_warps": cfg.get("num_warps", 4)},
    )  # fmt: skip


def bwd_grid(x, config: dict) -> tuple[bool, int, int, int]:
    """(walk_c, blocks, splits, per_split) of a launch: ``blocks`` along the fast axis, the walked
    axis cut into ``splits`` of ``per_split`` elements (whole chunks, none empty, at least the
    SPLITS asked for wherever there are that many chunks)."""
    plan = bwd_plan(x, config)
    return plan.walk_c, plan.blocks, plan.splits, plan.per_split


def bwd_partial_shapes(x, config: dict) -> tuple[tuple, tuple]:
    """Shapes of (gmc_part, gms_part) for ``x`` (N, C, H, W): (N, C, P_hw) and (N, P_c, H·W)."""
    plan = bwd_plan(x, config)
    return plan.gmc_part_shape, plan.gms_part_shape


def launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, *, combine: str, residual: bool,
                    config: dict | None = None, plan: BwdPlan | None = None):  # fmt: skip
    """Stage one of the backward: write ``gx`` and the gmc/gms partial sums.

    Shapes: g, x, gx (N, C, H, W) with x's strides; mc (N, C), ms (N, H·W) contiguous or None
    (any shape holding those elements in that order will do: only the pointers are used);
    gmc_part and gms_part as :func:`bwd_partial_shapes`, in the compute dtype (None where the
    map is None). ``config`` as :func:`bwd_config` returns (``INT64`` forces 64-bit offsets;
    ``NUM_STAGES`` and ``num_warps`` default to 1 and 4);
    ``plan``, when the caller has it already, is :func:`bwd_plan` of x and config.
    """
    if x.numel() == 0:
        return
    plan = plan or bwd_plan(x, config)
    mw, mf, gw_part, gf_part = (mc, ms, gmc_part, gms_part) if plan.walk_c else (ms, mc, gms_part, gmc_part)
    gate_bwd_kernel[plan.grid](
        g, x, mw if mw is not None else x, mf if mf is not None else x, gx,
        gw_part if mw is not None else gx, gf_part if mf is not None else gx, *plan.args,
        COMBINE=COMBINE_CODES[combine], HAS_MW=mw is not None, HAS_MF=mf is not None, RESIDUAL=residual,
        **plan.meta,
    )  # fmt: skip


def launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms, block: int = 1024):
    """Stage two of the backward: ``gmc = gmc_part.sum(-1)``, ``gms = gms_part.sum(1)`` in one launch.

    Shapes: gmc_part (N, C, P_hw) → gmc (N, C); gms_part (N, P_c, HW) → gms (N, HW), or any
    shape of as many elements; either pair may be None. The outputs keep their dtypes (the maps').
    """
    gmc_total = gmc.numel() if gmc is not None else 0
    gms_total = gms.numel() if gms is not None else 0
    gmc_programs = cdiv(gmc_total, block)
    grid = (gmc_programs + cdiv(gms_total, block),)
    if grid[0] == 0:
        return
    ref = gmc if gmc is not None else gms
    gate_bwd_reduce_kernel[grid](
        gmc_part if gmc is not None else ref, gmc if gmc is not None else ref, gmc_total,
        gmc_part.shape[-1] if gmc is not None else 0, gmc_programs,
        gms_part if gms is not None else ref, gms if gms is not None else ref, gms_total,
        gms_part.shape[1] if gms is not None else 0, gms_part.shape[-1] if gms is not None else 1,
        HAS_MC=gmc is not None, HAS_MS=gms is not None, BLOCK=block, num_warps=4,
    )  # fmt: skip


def gate_bwd(g, x, mc, ms, *, combine: str, residual: bool, config: dict | None = None):
    """Gradients of the gate: returns ``(gx, gmc, gms)``, gmc/gms None where mc/ms is None.

    Shapes as :func:`launch_gate_bwd`; g must have x's strides. gx has x's dtype, gmc and gms
    the shapes and dtypes of mc and ms. Two launches: stage one, then the fixed-order reduction.
    """
    N, C, H, W = x.shape
    plan = bwd_plan(x, config)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    gx = torch.empty_like(x)
    gmc_part = gms_part = gmc = gms = None
    if mc is not None:
        gmc_part = torch.empty(plan.gmc_part_shape, device=x.device, dtype=acc_dtype)
        gmc = torch.empty(mc.shape, device=x.device, dtype=mc.dtype)
    if ms is not None:
        gms_part = torch.empty(plan.gms_part_shape, device=x.device, dtype=acc_dtype)
        gms = torch.empty(ms.shape, device=x.device, dtype=ms.dtype)
    launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, combine=combine, residual=residual, plan=plan)
    launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms)
    return gx, gmc, gms
