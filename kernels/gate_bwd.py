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

import torch
import triton
import triton.language as tl

from .gate_math import COMBINE_CODES, gate_combine_grads, gate_preactivation, gate_sigmoid
from .layout import cdiv, compute_dtype, gate_layout, multiprocessor_count, tile_shape

# Bytes of x per chunk of the walk (two inputs and an fp32 accumulator live at once), and the
# programs per SM the split aims for. Both from tuning sweep 2 on an H200 (benchmarks/NOTES.md):
# 4 KiB chunks and 4 programs/SM had the best mean and the best worst case over the six
# ResNet-50 shape/layouts among 8/16 KiB chunks, 4/8 warps, 4/16 programs per SM.
BWD_TILE_BYTES = 4096
PROGRAMS_PER_SM = 4


@triton.jit
def _bwd_chunk(g_ptr, x_ptr, gx_ptr, offs, mask, mc, ms,
               COMBINE: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, RESIDUAL: tl.constexpr,
               COMPUTE: tl.constexpr):  # fmt: skip
    """Store gx for one chunk; return t's shares for mc and for ms (exactly 0 on masked lanes)."""
    s = gate_sigmoid(gate_preactivation(mc, ms, COMBINE, HAS_MC, HAS_MS))
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if RESIDUAL:
        gx = g * (1.0 + s)
    else:
        gx = g * s
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    # Masked lanes must add exactly 0: an inf in the other map would make 0 · inf = NaN there.
    t = tl.where(mask, g * x * s * (1.0 - s), 0.0)
    if HAS_MC and HAS_MS:
        t_mc, t_ms = gate_combine_grads(t, mc, ms, COMBINE)
    else:
        t_mc = t
        t_ms = t
    return t_mc, t_ms


@triton.jit
def gate_bwd_kernel(
    g_ptr, x_ptr, mc_ptr, ms_ptr, gx_ptr, gmc_part_ptr, gms_part_ptr,
    C, HW,
    stride_n, stride_c, stride_hw,
    num_blocks, num_splits, per_split,
    COMBINE: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, RESIDUAL: tl.constexpr,
    WALK_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, INT64: tl.constexpr,
    COMPUTE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pid_b = pid % num_blocks
    pid_s = (pid // num_blocks) % num_splits
    n = pid // (num_blocks * num_splits)
    if INT64:
        n = n.to(tl.int64)
    start = pid_s * per_split
    if WALK_C:
        # NCHW: hw-block pid_b, channels [start, end) walked in BLOCK_C chunks.
        hw = pid_b * BLOCK_HW + tl.arange(0, BLOCK_HW)
        if INT64:
            hw = hw.to(tl.int64)
        hw_mask = hw < HW
        ms = tl.zeros([BLOCK_HW], dtype=COMPUTE)
        if HAS_MS:
            ms = tl.load(ms_ptr + n * HW + hw, mask=hw_mask, other=0.0).to(COMPUTE)
        gms_acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=COMPUTE)
        end = tl.minimum(C, start + per_split)
        for c0 in range(start, end, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            if INT64:
                c = c.to(tl.int64)
            c_mask = c < end
            mc = tl.zeros([BLOCK_C], dtype=COMPUTE)
            if HAS_MC:
                mc = tl.load(mc_ptr + n * C + c, mask=c_mask, other=0.0).to(COMPUTE)
            offs = n * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw
            t_mc, t_ms = _bwd_chunk(g_ptr, x_ptr, gx_ptr, offs, c_mask[:, None] & hw_mask[None, :],
                                    mc[:, None], ms[None, :], COMBINE, HAS_MC, HAS_MS, RESIDUAL, COMPUTE)  # fmt: skip
            if HAS_MC:
                tl.store(gmc_part_ptr + (n * C + c) * num_blocks + pid_b, tl.sum(t_mc, axis=1), mask=c_mask)
            if HAS_MS:
                gms_acc += t_ms
        if HAS_MS:
            tl.store(gms_part_ptr + (n * num_splits + pid_s) * HW + hw, tl.sum(gms_acc, axis=0), mask=hw_mask)
    else:
        # channels_last: c-block pid_b, positions [start, end) walked in BLOCK_HW chunks.
        c = pid_b * BLOCK_C + tl.arange(0, BLOCK_C)
        if INT64:
            c = c.to(tl.int64)
        c_mask = c < C
        mc = tl.zeros([BLOCK_C], dtype=COMPUTE)
        if HAS_MC:
            mc = tl.load(mc_ptr + n * C + c, mask=c_mask, other=0.0).to(COMPUTE)
        gmc_acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=COMPUTE)
        end = tl.minimum(HW, start + per_split)
        for hw0 in range(start, end, BLOCK_HW):
            hw = hw0 + tl.arange(0, BLOCK_HW)
            if INT64:
                hw = hw.to(tl.int64)
            hw_mask = hw < end
            ms = tl.zeros([BLOCK_HW], dtype=COMPUTE)
            if HAS_MS:
                ms = tl.load(ms_ptr + n * HW + hw, mask=hw_mask, other=0.0).to(COMPUTE)
            offs = n * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw
            t_mc, t_ms = _bwd_chunk(g_ptr, x_ptr, gx_ptr, offs, c_mask[:, None] & hw_mask[None, :],
                                    mc[:, None], ms[None, :], COMBINE, HAS_MC, HAS_MS, RESIDUAL, COMPUTE)  # fmt: skip
            if HAS_MS:
                tl.store(gms_part_ptr + (n * num_blocks + pid_b) * HW + hw, tl.sum(t_ms, axis=0), mask=hw_mask)
            if HAS_MC:
                gmc_acc += t_mc
        if HAS_MC:
            tl.store(gmc_part_ptr + (n * C + c) * num_splits + pid_s, tl.sum(gmc_acc, axis=1), mask=c_mask)


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
    gmc_part_ptr, gmc_ptr, gmc_total, num_hw_blocks, gmc_programs,
    gms_part_ptr, gms_ptr, gms_total, num_c_splits, HW,
    HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Stage two: both partial sums reduced in one launch, in a fixed order, cast to the maps' dtypes.

    Programs [0, gmc_programs) sum gmc_part [N·C, hw-blocks] over hw-blocks; the rest sum
    gms_part [N, c-splits, HW] over c-splits.
    """
    pid = tl.program_id(0)
    if HAS_MC and pid < gmc_programs:
        _sum_middle_axis(gmc_part_ptr, gmc_ptr, pid * BLOCK, gmc_total, num_hw_blocks, 1, BLOCK)
    elif HAS_MS:
        _sum_middle_axis(gms_part_ptr, gms_ptr, (pid - gmc_programs) * BLOCK, gms_total, num_c_splits, HW, BLOCK)


def bwd_config(N: int, C: int, HW: int, channels_last: bool, element_size: int, num_sms: int) -> dict:
    """Block shape, split of the walked axis and warps for the backward.

    The fast axis gets at most one warp's width of 16-byte vectors (256 bf16, 128 fp32 lanes)
    so that the per-chunk sum along it never leaves a warp; the walked axis gets the rest of a
    BWD_TILE_BYTES chunk. The split grows until there are PROGRAMS_PER_SM programs per SM,
    never below one chunk per split.
    """
    tile_elems = BWD_TILE_BYTES // element_size
    warp_width = 32 * max(1, 16 // element_size)
    block_c, block_hw = tile_shape(C, HW, channels_last, tile_elems, max_fast=warp_width)
    walk_c = not channels_last
    blocks = cdiv(HW, block_hw) if walk_c else cdiv(C, block_c)
    chunks = cdiv(C, block_c) if walk_c else cdiv(HW, block_hw)
    splits = max(1, min(chunks, cdiv(PROGRAMS_PER_SM * num_sms, max(N * blocks, 1))))
    return {"BLOCK_C": block_c, "BLOCK_HW": block_hw, "SPLITS": splits, "num_warps": 4}


def bwd_grid(x, config: dict) -> tuple[bool, int, int, int]:
    """(walk_c, blocks, splits, per_split) of a launch: ``blocks`` along the fast axis, the walked
    axis cut into ``splits`` of ``per_split`` elements (whole chunks, none empty, at least the
    SPLITS asked for wherever there are that many chunks)."""
    _, C, H, W = x.shape
    HW = H * W
    walk_c = not gate_layout(x).channels_last
    if walk_c:
        (fast, fast_block), (slow, slow_block) = (HW, config["BLOCK_HW"]), (C, config["BLOCK_C"])
    else:
        (fast, fast_block), (slow, slow_block) = (C, config["BLOCK_C"]), (HW, config["BLOCK_HW"])
    chunks = cdiv(slow, slow_block)
    per_split = max(1, chunks // max(1, config["SPLITS"])) * slow_block
    return walk_c, cdiv(fast, fast_block), cdiv(slow, per_split), per_split


def bwd_partial_shapes(x, config: dict) -> tuple[tuple, tuple]:
    """Shapes of (gmc_part, gms_part) for ``x`` (N, C, H, W): (N, C, P_hw) and (N, P_c, H·W)."""
    N, C, H, W = x.shape
    walk_c, blocks, splits, _ = bwd_grid(x, config)
    p_hw, p_c = (blocks, splits) if walk_c else (splits, blocks)
    return (N, C, p_hw), (N, p_c, H * W)


def launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, *, combine: str, residual: bool, config: dict):
    """Stage one of the backward: write ``gx`` and the gmc/gms partial sums.

    Shapes: g, x, gx (N, C, H, W) with x's strides; mc (N, C), ms (N, H·W) contiguous or None;
    gmc_part and gms_part as :func:`bwd_partial_shapes`, in the compute dtype (None where the
    map is None). ``config`` as :func:`bwd_config` returns (``INT64`` forces 64-bit offsets).
    """
    N, C, H, W = x.shape
    if x.numel() == 0:
        return
    lay = gate_layout(x)
    walk_c, blocks, splits, per_split = bwd_grid(x, config)
    gate_bwd_kernel[(N * blocks * splits,)](
        g, x, mc if mc is not None else x, ms if ms is not None else x, gx,
        gmc_part if mc is not None else gx, gms_part if ms is not None else gx,
        C, H * W, lay.stride_n, lay.stride_c, lay.stride_hw, blocks, splits, per_split,
        COMBINE=COMBINE_CODES[combine], HAS_MC=mc is not None, HAS_MS=ms is not None,
        RESIDUAL=residual, WALK_C=walk_c, BLOCK_C=config["BLOCK_C"], BLOCK_HW=config["BLOCK_HW"],
        INT64=config.get("INT64", lay.int64), COMPUTE=compute_dtype(x), num_warps=config.get("num_warps", 4),
    )  # fmt: skip


def launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms, block: int = 1024):
    """Stage two of the backward: ``gmc = gmc_part.sum(-1)``, ``gms = gms_part.sum(1)`` in one launch.

    Shapes: gmc_part (N, C, hw-blocks) → gmc (N, C); gms_part (N, c-splits, HW) → gms (N, HW);
    either pair may be None. The outputs take their own dtypes (the maps').
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

    Shapes as :func:`launch_gate_bwd`; g must have x's strides. gx has x's dtype, gmc (N, C)
    and gms (N, H·W) the dtypes of mc/ms. Two launches: stage one, then the fixed-order reduction.
    """
    N, C, H, W = x.shape
    cfg = config or bwd_config(N, C, H * W, gate_layout(x).channels_last, x.element_size(),
                               multiprocessor_count(x.device))  # fmt: skip
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    gmc_shape, gms_shape = bwd_partial_shapes(x, cfg)
    gx = torch.empty_like(x)
    gmc_part = gms_part = gmc = gms = None
    if mc is not None:
        gmc_part = torch.empty(gmc_shape, device=x.device, dtype=acc_dtype)
        gmc = torch.empty((N, C), device=x.device, dtype=mc.dtype)
    if ms is not None:
        gms_part = torch.empty(gms_shape, device=x.device, dtype=acc_dtype)
        gms = torch.empty((N, H * W), device=x.device, dtype=ms.dtype)
    launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, combine=combine, residual=residual, config=cfg)
    launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms)
    return gx, gmc, gms
