"""Backward of the fused BAM gate in one pass over g and x, deterministic.

    gx        = g · (1 + s)          (g · s without the residual)
    t         = g · x · s · (1 − s)  = ∂L/∂a
    gmc[n, c] = Σ_hw t · ∂a/∂mc      gms[n, hw] = Σ_c t · ∂a/∂ms

The kernel speaks of two axes: the **fast** axis, contiguous in memory (hw for NCHW, c for
channels_last), and the **walked** axis, the other one. Each program owns one block of the fast
axis and walks one split of the walked axis in chunks. Per chunk it writes gx and the chunk's
sum along the fast axis, which stays inside a warp; the sum along the walked axis is
accumulated element-wise in registers and reduced across warps once, after the walk, so no
barrier stalls the loop. Both sums leave the kernel as partials of the same form,

    gw_part [N, fast blocks, walk]   the map along the walked axis, one row per fast block
    gf_part [N, walk splits, fast]   the map along the fast axis, one row per split

and ``gate_bwd_reduce_kernel`` sums both over their middle axis in one launch, in a fixed
order: bitwise reproducible, no float atomics. The split fills the GPU at small maps. Only
the launcher :func:`gate_bwd` speaks of mc and ms: it hands the kernel (mc, ms) as (walked,
fast) maps for NCHW and as (fast, walked) for channels_last.
"""

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .dot import cast, emulate_bf16
from .gate_math import COMBINE_CODES, gate_combine_grads, gate_preactivation, gate_sigmoid
from .layout import (
    NUM_WARPS,
    as_kernel_layout,
    dense,
    hw_addressed,
    launch_guard,
    layout_of,
    stride_args,
    tile_shape,
    tl_compute_dtype,
)
from .target import Target, all_registers, target_of
from .utils import cdiv, compute_dtype

# Bytes of x per chunk of the walk (two inputs and an fp32 accumulator live at once), and the
# programs per SM stage one's split of the walked axis aims for (more programs, more partial sums
# for stage two). Both from tuning sweep 2 on an H200 (benchmarks/NOTES.md): 4 KiB chunks and 4
# programs/SM had the best mean and the best worst case over the six ResNet-50 shape/layouts
# among 8/16 KiB chunks, 4/8 warps, 4/16 programs per SM.
BWD_TILE_BYTES = 4096
GATE_BWD_PROGRAMS_PER_SM = 4
# Outputs per program of the reduction (stage two).
REDUCE_BLOCK = 1024


@triton.jit
def gate_bwd_kernel(
    g_ptr,  # (N, walk, fast) by its own strides (an expanded g is read as it is)
    x_ptr,  # (N, walk, fast) by the strides below
    mw_ptr,  # the map along the walked axis, (N, walk) contiguous; unused without HAS_MW
    mf_ptr,  # the map along the fast axis, (N, fast) contiguous; unused without HAS_MF
    gx_ptr,  # like x; unused without STORE_GX
    part_ptr,  # COMPUTE: gw_part (N, fast_blocks, walk) and gf_part (N, walk_splits, fast) at their offsets
    walk_size,
    fast_size,
    stride_n,  # x's and gx's strides over (n, walk, fast)
    stride_w,
    stride_f,
    g_stride_n,  # g's
    g_stride_w,
    g_stride_f,
    gw_part_offset,  # elements of part_ptr before gw_part
    gf_part_offset,  # and before gf_part
    fast_blocks,  # programs along the fast axis per sample
    walk_splits,  # programs along the walked axis per sample
    per_split,  # elements of the walked axis per split (whole chunks)
    COMBINE: tl.constexpr,  # COMBINE_CODES
    HAS_MW: tl.constexpr,
    HAS_MF: tl.constexpr,
    RESIDUAL: tl.constexpr,  # gx = g · (1 + s), else g · s
    STORE_GX: tl.constexpr,  # write gx (the fused module writes its own gx later)
    G_LIKE_X: tl.constexpr,  # g has x's strides (the usual case: no second set of offsets)
    BLOCK_W: tl.constexpr,  # chunk of the walked axis
    BLOCK_F: tl.constexpr,  # block of the fast axis
    INT64: tl.constexpr,  # 64-bit offsets
    COMPUTE: tl.constexpr,  # float32, or float64 for gradcheck
    NUM_STAGES: tl.constexpr,  # chunks in flight (> 1: prefetched through shared memory)
):
    """Stage one for (sample n, fast block pid_b, walk split pid_s). The gate is symmetric in
    its two maps (a = mc ⊕ ms, and each map's share of t), so one body serves both layouts."""
    pid = tl.program_id(0)
    pid_b = pid % fast_blocks
    pid_s = (pid // fast_blocks) % walk_splits
    n = pid // (fast_blocks * walk_splits)
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
        if G_LIKE_X:
            g_offs = offs
        else:
            g_offs = n * g_stride_n + w[:, None] * g_stride_w + f[None, :] * g_stride_f
        s = gate_sigmoid(gate_preactivation(mw[:, None], mf[None, :], COMBINE, HAS_MW, HAS_MF))
        g = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        if STORE_GX:
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
        if HAS_MW:  # summed along f inside a warp: the fast block is at most a warp wide
            gw = tl.sum(t_w, axis=1)
            gw_offs = gw_part_offset + (n * fast_blocks + pid_b) * walk_size + w
            tl.store(part_ptr + gw_offs, gw, mask=w_mask)
        if HAS_MF:  # summed along w once, after the walk: no barrier inside the loop
            gf_acc += t_f
    if HAS_MF:
        gf = tl.sum(gf_acc, axis=0)
        tl.store(part_ptr + gf_part_offset + (n * walk_splits + pid_s) * fast_size + f, gf, mask=f_mask)


@triton.jit
def _sum_parts(part_ptr, out_ptr, start, numel, P, L, BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """out[n, l] = Σ_p part[n, p, l], p in order, for the BLOCK flat indices n·L + l from ``start``
    (EMULATE: kernels.dot.cast's bf16 rounding under the interpreter)."""
    o = start + tl.arange(0, BLOCK)
    mask = o < numel
    n = o // L
    base = n * P * L + (o - n * L)
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for p in range(P):
        acc += tl.load(part_ptr + base + p * L, mask=mask, other=0.0)
    tl.store(out_ptr + o, cast(acc, out_ptr.dtype.element_ty, EMULATE), mask=mask)


@triton.jit
def gate_bwd_reduce_kernel(
    part_ptr,  # COMPUTE: gmc_part (N, P_c, C) and gms_part (N, P_hw, HW) at their offsets
    gmc_ptr,  # (N, C) in mc's dtype
    gms_ptr,  # (N, HW) in ms's dtype
    gmc_part_offset,  # elements of part_ptr before gmc_part
    gms_part_offset,  # and before gms_part
    C,
    HW,
    P_c,
    P_hw,
    gmc_numel,  # N·C
    gms_numel,  # N·HW
    gmc_programs,  # programs [0, gmc_programs) sum gmc, the rest gms
    HAS_MC: tl.constexpr,
    HAS_MS: tl.constexpr,
    BLOCK: tl.constexpr,
    EMULATE_MC: tl.constexpr,  # kernels.dot's bf16 rounding for gmc, gms (under the interpreter)
    EMULATE_MS: tl.constexpr,
):
    """Stage two: both maps' partials summed over their middle axis in one launch, in a fixed
    order, and cast to the maps' dtypes."""
    pid = tl.program_id(0)
    if HAS_MC and pid < gmc_programs:
        _sum_parts(part_ptr + gmc_part_offset, gmc_ptr, pid * BLOCK, gmc_numel, P_c, C, BLOCK, EMULATE_MC)
    elif HAS_MS:
        gms_start = (pid - gmc_programs) * BLOCK
        _sum_parts(part_ptr + gms_part_offset, gms_ptr, gms_start, gms_numel, P_hw, HW, BLOCK, EMULATE_MS)


class BwdConfig(NamedTuple):
    """The backward's tuning knobs."""

    block_c: int
    block_hw: int
    splits: int  # pieces of the walked axis asked for (whole chunks each)
    num_warps: int = NUM_WARPS
    num_stages: int = 1  # chunks of the walk in flight
    reduce_block: int = REDUCE_BLOCK  # outputs per program of stage two


def bwd_config(
    N: int, C: int, HW: int, channels_last: bool, element_size: int, num_sms: int, tile_bytes: int = BWD_TILE_BYTES
) -> BwdConfig:
    """The backward's heuristic.

    The fast axis gets at most one warp's width of 16-byte vectors (256 bf16, 128 fp32 lanes)
    so that the per-chunk sum along it never leaves a warp; the walked axis gets the rest of a
    ``tile_bytes`` chunk. The split grows until there are GATE_BWD_PROGRAMS_PER_SM programs per SM,
    never below one chunk per split. num_stages stays 1 (no prefetch into shared memory) until
    a GPU sweep (``python -m benchmarks.tune``, which varies ``tile_bytes`` too) shows more win.
    """
    warp_width = 32 * max(1, 16 // element_size)
    block_c, block_hw = tile_shape(C, HW, channels_last, tile_bytes // element_size, max_fast=warp_width)
    (walk, block_w), (fast, block_f) = (
        ((HW, block_hw), (C, block_c)) if channels_last else ((C, block_c), (HW, block_hw))
    )
    fast_blocks, chunks = cdiv(fast, block_f), cdiv(walk, block_w)
    splits = max(1, min(chunks, cdiv(GATE_BWD_PROGRAMS_PER_SM * num_sms, max(N * fast_blocks, 1))))
    return BwdConfig(block_c, block_hw, splits)


class BwdPlan(NamedTuple):
    """Everything the two backward launches derive from x's shape, layout, dtype and device and
    the config. Both maps' partials share one buffer: gmc_part first, then gms_part."""

    walk_is_c: bool  # NCHW: hw blocks walk the channels; channels_last: c blocks walk positions
    fast_blocks: int
    walk_splits: int  # pieces of the walked axis, whole chunks each, none empty
    gmc_part_shape: tuple  # (N, P_c, C)
    gms_part_shape: tuple  # (N, P_hw, HW)
    grid: tuple
    scalars: dict  # gate_bwd_kernel's scalar arguments by name, but g's strides
    meta: dict  # its constexprs and num_warps
    reduce_programs: tuple  # programs of the reduction for gmc and for gms
    reduce_scalars: dict  # gate_bwd_reduce_kernel's scalar arguments by name, but gmc_programs
    reduce_meta: dict  # its block and num_warps

    @property
    def x_strides(self) -> tuple:
        """x's (and gx's) strides over (n, walk, fast)."""
        return self.scalars["stride_n"], self.scalars["stride_w"], self.scalars["stride_f"]

    @property
    def parts_numel(self) -> int:
        """Elements of the partials' buffer (both maps')."""
        return math.prod(self.gmc_part_shape) + math.prod(self.gms_part_shape)

    def part_views(self, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gmc_part, gms_part) as views of the partials' buffer ``parts``."""
        gmc_numel = math.prod(self.gmc_part_shape)
        return parts[:gmc_numel].view(self.gmc_part_shape), parts[gmc_numel:].view(self.gms_part_shape)


def bwd_plan(x: torch.Tensor, config: BwdConfig | None = None, force_int64: bool = False) -> BwdPlan:
    """The launch plan for ``x`` (N, C, H, W) with ``config`` (None: :func:`bwd_config`'s for x's
    device), cached: a training step asks for the same few plans on every call. ``force_int64``
    takes the 64-bit offset path whatever the size (tests)."""
    return _bwd_plan(x.shape, x.stride(), x.dtype, target_of(x.device), config, force_int64)


@functools.lru_cache(maxsize=1024)
def _bwd_plan(shape, strides, dtype, target: Target, config, force_int64) -> BwdPlan:
    N, C, H, W = shape
    HW = H * W
    lay = layout_of(shape, strides)
    cfg = config or bwd_config(N, C, HW, lay.channels_last, dtype.itemsize, target.sms)
    walk_is_c = not lay.channels_last
    c_axis, hw_axis = (C, cfg.block_c, lay.stride_c), (HW, cfg.block_hw, lay.stride_hw)
    (walk, block_w, stride_w), (fast, block_f, stride_f) = (c_axis, hw_axis) if walk_is_c else (hw_axis, c_axis)
    per_split = max(1, cdiv(walk, block_w) // max(1, cfg.splits)) * block_w
    fast_blocks, walk_splits = cdiv(fast, block_f), cdiv(walk, per_split)
    P_c, P_hw = (fast_blocks, walk_splits) if walk_is_c else (walk_splits, fast_blocks)
    gmc_part_offset, gms_part_offset = 0, N * P_c * C
    gw_offset, gf_offset = (gmc_part_offset, gms_part_offset) if walk_is_c else (gms_part_offset, gmc_part_offset)
    return BwdPlan(
        walk_is_c,
        fast_blocks,
        walk_splits,
        gmc_part_shape=(N, P_c, C),
        gms_part_shape=(N, P_hw, HW),
        grid=(N * fast_blocks * walk_splits,),
        scalars={
            "walk_size": walk,
            "fast_size": fast,
            "stride_n": lay.stride_n,
            "stride_w": stride_w,
            "stride_f": stride_f,
            "gw_part_offset": gw_offset,
            "gf_part_offset": gf_offset,
            "fast_blocks": fast_blocks,
            "walk_splits": walk_splits,
            "per_split": per_split,
        },
        meta={
            "BLOCK_W": block_w,
            "BLOCK_F": block_f,
            "INT64": lay.int64 or force_int64,
            "COMPUTE": tl_compute_dtype(dtype),
            "NUM_STAGES": cfg.num_stages,
            **all_registers(cfg.num_warps),
        },
        reduce_programs=(cdiv(N * C, cfg.reduce_block), cdiv(N * HW, cfg.reduce_block)),
        reduce_scalars={
            "gmc_part_offset": gmc_part_offset,
            "gms_part_offset": gms_part_offset,
            "C": C,
            "HW": HW,
            "P_c": P_c,
            "P_hw": P_hw,
            "gmc_numel": N * C,
            "gms_numel": N * HW,
        },
        reduce_meta={"BLOCK": cfg.reduce_block, "num_warps": cfg.num_warps},
    )


class BwdBuffers(NamedTuple):
    """What the backward writes: the gradients and stage one's partial sums."""

    gx: torch.Tensor  # like x
    gmc: torch.Tensor | None  # mc's shape and dtype
    gms: torch.Tensor | None  # ms's shape and dtype
    parts: torch.Tensor  # (BwdPlan.parts_numel,) in the compute dtype: see BwdPlan.part_views


def bwd_buffers(x, mc, ms, plan: BwdPlan, fill: float | None = None) -> BwdBuffers:
    """The backward's outputs for x (in a kernel layout), mc and ms (None where absent) under
    ``plan``; uninitialised, or all ``fill`` (tests poison them with NaN)."""

    def filled(t):
        return t if fill is None else t.fill_(fill)

    return BwdBuffers(
        filled(torch.empty_like(x)),
        filled(torch.empty_like(mc, memory_format=torch.contiguous_format)) if mc is not None else None,
        filled(torch.empty_like(ms, memory_format=torch.contiguous_format)) if ms is not None else None,
        filled(torch.empty(plan.parts_numel, dtype=compute_dtype(x.dtype), device=x.device)),
    )


# The stage-one kernel's axes of g, after n: the walked one, then the fast one.
_WALK_FAST = ("n", "w", "f")


def launch_gate_bwd_stage_one(g, x, mc, ms, gx, parts, plan: BwdPlan, *, combine: str, residual: bool) -> None:
    """Stage one: gx (skipped when ``gx`` is None) and both maps' partials into ``parts``.

    x in a kernel layout, mc and ms dense (or None), g (N, C, H, W) in any layout; ``plan`` is
    :func:`bwd_plan` of x.
    """
    if x.numel() == 0:
        return
    g, (stride_n, stride_c, stride_hw) = hw_addressed(g, x)
    g_strides = (stride_n, stride_c, stride_hw) if plan.walk_is_c else (stride_n, stride_hw, stride_c)
    mw, mf = (mc, ms) if plan.walk_is_c else (ms, mc)
    with launch_guard(gate_bwd_kernel, x.device) as launch:
        launch[plan.grid](
            g_ptr=g,
            x_ptr=x,
            mw_ptr=mw if mw is not None else mf,  # pointers the kernel does not read stand in for absent tensors
            mf_ptr=mf if mf is not None else mw,
            gx_ptr=gx if gx is not None else parts,
            part_ptr=parts,
            **plan.scalars,
            **stride_args("g", g_strides, _WALK_FAST),
            COMBINE=COMBINE_CODES[combine],
            HAS_MW=mw is not None,
            HAS_MF=mf is not None,
            RESIDUAL=residual,
            STORE_GX=gx is not None,
            G_LIKE_X=g_strides == plan.x_strides,
            **plan.meta,
        )


def launch_gate_bwd_stage_two(parts, gmc, gms, plan: BwdPlan) -> None:
    """Stage two: gmc and gms (either may be None) from stage one's partials, in a fixed order."""
    gmc_programs = plan.reduce_programs[0] if gmc is not None else 0
    programs = gmc_programs + (plan.reduce_programs[1] if gms is not None else 0)
    if not programs:
        return
    some = gmc if gmc is not None else gms
    with launch_guard(gate_bwd_reduce_kernel, parts.device) as launch:
        launch[(programs,)](
            part_ptr=parts,
            gmc_ptr=gmc if gmc is not None else some,
            gms_ptr=gms if gms is not None else some,
            **plan.reduce_scalars,
            gmc_programs=gmc_programs,
            HAS_MC=gmc is not None,
            HAS_MS=gms is not None,
            EMULATE_MC=gmc is not None and emulate_bf16(gmc.dtype),
            EMULATE_MS=gms is not None and emulate_bf16(gms.dtype),
            **plan.reduce_meta,
        )


def gate_bwd(
    g: torch.Tensor,
    x: torch.Tensor,
    mc: torch.Tensor | None,
    ms: torch.Tensor | None,
    *,
    combine: str,
    residual: bool,
    config: BwdConfig | None = None,
    out: BwdBuffers | None = None,
    force_int64: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the gate: ``(gx, gmc, gms)``, gmc/gms None where mc/ms is None.

    Shapes as :func:`bam_fused.kernels.gate_fwd`; g (N, C, H, W) in any layout (read by its
    strides where (h, w) collapse, an expanded one included; else copied to x's layout). gx has
    x's dtype and strides, gmc and gms the shapes and dtypes of mc and ms. Two launches: stage
    one, then the fixed-order reduction of its partials. ``out``: the buffers to write
    (:func:`bwd_buffers` of the same plan; tests pass poisoned ones); ``config`` and
    ``force_int64`` as :func:`bwd_plan`.
    """
    x = as_kernel_layout(x)
    mc, ms = dense(mc), dense(ms)
    plan = bwd_plan(x, config, force_int64)
    buf = out if out is not None else bwd_buffers(x, mc, ms, plan)
    launch_gate_bwd_stage_one(g, x, mc, ms, buf.gx, buf.parts, plan, combine=combine, residual=residual)
    launch_gate_bwd_stage_two(buf.parts, buf.gmc, buf.gms, plan)
    return buf.gx, buf.gmc, buf.gms
