"""Backward of the fused BAM gate in one pass over g and x, deterministic.

    gx        = g · (1 + s)          (g · s without the residual)
    t         = g · x · s · (1 − s)  = ∂L/∂a
    gmc[n, c] = Σ_hw t · ∂a/∂mc      gms[n, hw] = Σ_c t · ∂a/∂ms

One program per (n, hw-block, c-split) walks its channels in BLOCK_C chunks: it writes gx,
keeps the gms sum of its hw-block in registers across the walk and writes each chunk's gmc
sum over its hw-block. Both sums leave the kernel as partials — gmc as [N, C, hw-blocks],
gms as [N, c-splits, HW] — and a second small kernel reduces both in one launch in a fixed
order, so the result is bitwise reproducible (no float atomics). The c-split fills the GPU at small maps, where
N · hw-blocks alone is too few programs.
"""

import torch
import triton
import triton.language as tl

from .gate_math import COMBINE_CODES, gate_combine_grads, gate_preactivation, gate_sigmoid
from .layout import TILE_BYTES, compute_dtype, gate_layout, multiprocessor_count, tile_shape

# Programs per SM the c-split aims for: enough that small maps fill the GPU and that the last
# wave of long-running programs is a small fraction of the whole.
PROGRAMS_PER_SM = 8


@triton.jit
def gate_bwd_kernel(
    g_ptr, x_ptr, mc_ptr, ms_ptr, gx_ptr, gmc_part_ptr, gms_part_ptr,
    C, HW,
    stride_n, stride_c, stride_hw,
    num_hw_blocks, num_c_splits, c_per_split,
    COMBINE: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, INT64: tl.constexpr, COMPUTE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pid_hw = pid % num_hw_blocks
    pid_cs = (pid // num_hw_blocks) % num_c_splits
    n = pid // (num_hw_blocks * num_c_splits)
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    if INT64:
        n = n.to(tl.int64)
        hw = hw.to(tl.int64)
    hw_mask = hw < HW

    ms = tl.zeros([BLOCK_HW], dtype=COMPUTE)
    if HAS_MS:
        ms = tl.load(ms_ptr + n * HW + hw, mask=hw_mask, other=0.0).to(COMPUTE)
    gms_acc = tl.zeros([BLOCK_HW], dtype=COMPUTE)

    c_start = pid_cs * c_per_split
    c_end = tl.minimum(C, c_start + c_per_split)
    for c0 in range(c_start, c_end, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        if INT64:
            c = c.to(tl.int64)
        c_mask = c < c_end
        mask = c_mask[:, None] & hw_mask[None, :]
        mc = tl.zeros([BLOCK_C], dtype=COMPUTE)
        if HAS_MC:
            mc = tl.load(mc_ptr + n * C + c, mask=c_mask, other=0.0).to(COMPUTE)
        s = gate_sigmoid(gate_preactivation(mc[:, None], ms[None, :], COMBINE, HAS_MC, HAS_MS))

        offs = n * stride_n + c[:, None] * stride_c + hw[None, :] * stride_hw
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
            t_mc, t_ms = gate_combine_grads(t, mc[:, None], ms[None, :], COMBINE)
        else:
            t_mc = t
            t_ms = t
        if HAS_MC:
            gmc = tl.sum(t_mc, axis=1)
            tl.store(gmc_part_ptr + (n * C + c) * num_hw_blocks + pid_hw, gmc, mask=c_mask)
        if HAS_MS:
            gms_acc += tl.sum(t_ms, axis=0)

    if HAS_MS:
        tl.store(gms_part_ptr + (n * num_c_splits + pid_cs) * HW + hw, gms_acc, mask=hw_mask)


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
    """Block shape, c-split and warps for the backward.

    The tile is half the forward's (two inputs and fp32 temporaries live at once). The gmc
    partials hold N·C·HW/BLOCK_HW floats, so BLOCK_HW must stay wide: for NCHW hw is the fast
    axis anyway (up to 256); for channels_last c is, and is held to 64 lanes so that the tile
    spans 64+ positions. The c-split grows until there are PROGRAMS_PER_SM programs per SM,
    never below one BLOCK_C chunk per split.
    """
    tile_elems = TILE_BYTES // 2 // element_size
    block_c, block_hw = tile_shape(C, HW, channels_last, tile_elems, max_fast=64 if channels_last else 256)
    programs = N * triton.cdiv(HW, block_hw)
    max_splits = triton.cdiv(C, block_c)
    c_splits = max(1, min(max_splits, triton.cdiv(PROGRAMS_PER_SM * num_sms, max(programs, 1))))
    return {
        "BLOCK_C": block_c,
        "BLOCK_HW": block_hw,
        "C_SPLITS": c_splits,
        "num_warps": 4 if block_c * block_hw <= 2048 else 8,
    }


def launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, *, combine: str, residual: bool, config: dict):
    """Stage one of the backward: write ``gx`` and the gmc/gms partial sums.

    Shapes: g, x, gx (N, C, H, W) with x's strides; mc (N, C), ms (N, H·W) contiguous or None;
    gmc_part (N, C, cdiv(HW, BLOCK_HW)) and gms_part (N, C_SPLITS', HW) in the compute dtype
    (None where the map is None), where C_SPLITS' = :func:`split_count` (config). ``config`` as
    returned by :func:`bwd_config`.
    """
    N, C, H, W = x.shape
    HW = H * W
    if x.numel() == 0:
        return
    lay = gate_layout(x)
    num_hw_blocks = triton.cdiv(HW, config["BLOCK_HW"])
    c_per_split, num_c_splits = split_count(C, config)
    grid = (N * num_hw_blocks * num_c_splits,)
    gate_bwd_kernel[grid](
        g, x, mc if mc is not None else x, ms if ms is not None else x, gx,
        gmc_part if mc is not None else gx, gms_part if ms is not None else gx,
        C, HW, lay.stride_n, lay.stride_c, lay.stride_hw, num_hw_blocks, num_c_splits, c_per_split,
        COMBINE=COMBINE_CODES[combine], HAS_MC=mc is not None, HAS_MS=ms is not None,
        RESIDUAL=residual, BLOCK_C=config["BLOCK_C"], BLOCK_HW=config["BLOCK_HW"],
        INT64=config.get("INT64", lay.int64), COMPUTE=compute_dtype(x), num_warps=config.get("num_warps", 4),
    )  # fmt: skip


def split_count(C: int, config: dict) -> tuple[int, int]:
    """(channels per split, number of splits): whole BLOCK_C chunks per split, none empty, and
    at least the C_SPLITS asked for wherever C has that many chunks."""
    chunks = triton.cdiv(C, config["BLOCK_C"])
    c_per_split = max(1, chunks // max(1, config["C_SPLITS"])) * config["BLOCK_C"]
    return c_per_split, triton.cdiv(C, c_per_split)


def launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms, block: int = 1024):
    """Stage two of the backward: ``gmc = gmc_part.sum(-1)``, ``gms = gms_part.sum(1)`` in one launch.

    Shapes: gmc_part (N, C, hw-blocks) → gmc (N, C); gms_part (N, c-splits, HW) → gms (N, HW);
    either pair may be None. The outputs take their own dtypes (the maps').
    """
    gmc_total = gmc.numel() if gmc is not None else 0
    gms_total = gms.numel() if gms is not None else 0
    gmc_programs = triton.cdiv(gmc_total, block)
    grid = (gmc_programs + triton.cdiv(gms_total, block),)
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

    Shapes as :func:`launch_gate_bwd`; g must have x's strides. gx has x's dtype, gmc/gms
    the dtypes of mc/ms. Two launches: stage one, then the fixed-order reduction.
    """
    N, C, H, W = x.shape
    HW = H * W
    cfg = config or bwd_config(N, C, HW, gate_layout(x).channels_last, x.element_size(),
                               multiprocessor_count(x.device))  # fmt: skip
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    num_hw_blocks = triton.cdiv(HW, cfg["BLOCK_HW"])
    num_c_splits = split_count(C, cfg)[1] if C else 0
    gx = torch.empty_like(x)
    gmc_part = gms_part = gmc = gms = None
    if mc is not None:
        gmc_part = torch.empty((N, C, num_hw_blocks), device=x.device, dtype=acc_dtype)
        gmc = torch.empty((N, C), device=x.device, dtype=mc.dtype)
    if ms is not None:
        gms_part = torch.empty((N, num_c_splits, HW), device=x.device, dtype=acc_dtype)
        gms = torch.empty((N, HW), device=x.device, dtype=ms.dtype)
    launch_gate_bwd(g, x, mc, ms, gx, gmc_part, gms_part, combine=combine, residual=residual, config=cfg)
    launch_gate_bwd_reduce(gmc_part, gmc, gms_part, gms)
    return gx, gmc, gms
