"""The fused module's channel branch, forward and backward, each in one launch.

    u1 = p · W1ᵀ + b1          (N, h)      p: the pooled means (N, C)
    a1 = ReLU(BN1(u1))         (N, h)
    u2 = a1 · W2ᵀ + b2         (N, C)
    mc = BNc(u2)               (N, C)      (u2 itself without the paper's final BN)

The branch is 1/r of the module's small tensors and a few µs of matrix products, but as
separate cuBLAS/cuDNN calls it is 6 launches forward and 9 backward, each with its host cost.
One program does it all: it holds the whole batch (BatchNorm normalises over it) and walks the
channels in chunks, twice per direction. Every intermediate is rounded to the branch's dtype
where eager PyTorch would hold it in that dtype (autocast: bf16/fp16), so the numbers follow
the eager module's; statistics and sums are float32.

The forward writes one buffer (``out``, compute dtype) at the offsets of :class:`MlpPlan`: mc
(N, C) first (its values rounded to the branch dtype; the gate kernels read it as mc), then what
the backward needs: u1 and a1 (N, h), u2 (N, C), and the statistics each BatchNorm normalised
with (mean, 1/std). The backward writes ∂L/∂p over ∂L/∂mc, which it has read by then.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .dot import MIN_DOT, cast, dot, dot_meta
from .layout import launch_guard, tl_dtype
from .target import Target, all_registers, large_tiles, prefetches, staged_itemsize, target_of
from .utils import BatchNorm, next_pow2

# The one program holds the batch × hidden tiles [BLOCK_N × BLOCK_H] (u1, a1, their gradients) in
# registers, the channels streaming through in chunks [BLOCK_N × BLOCK_C] and [BLOCK_C × BLOCK_H].
MLP_WARPS = 8


class Tiles(NamedTuple):
    """How much one program holds, for one kind of tl.dot (see :func:`bam_fused.kernels.target.large_tiles`)."""

    chunk: int  # values of a chunk tile: BLOCK_C = chunk // max(BLOCK_N, BLOCK_H), at least 16
    batch_tile: int  # values of [BLOCK_N × BLOCK_H], at most: a larger batch or width takes the per-op path


# Tensor-core dots: 4096-value chunks; up to 128 × 64 or 256 × 32 (256 × 64 spilled 148 B-1.3 KB).
LARGE_TILES = Tiles(4096, 8192)
# FMA dots hold whole rows and columns of their operands per thread: 1024-value chunks (with 4096
# fp32 spilled 3.5-6.8 KB at 64 × 64); 64 × 64 in fp32, and less where the same spilled — in
# fp64 64 × 32 (36-196 B) and 128 × 16, and its chunks 512 values (1024 spilled 8-16 B on sm_86 to
# sm_120 at 16 × 16 × 64); in bf16 on sm_75, which converts it in software, 64 × 64 (508 B).
SMALL_TILES = Tiles(1024, 4096)
SMALL_TILES_FP64 = Tiles(512, 1024)
SMALL_TILES_BF16 = Tiles(1024, 2048)


def _tiles(branch_dtype: torch.dtype, compute: torch.dtype, target: Target) -> Tiles:
    if large_tiles(branch_dtype, target):
        return LARGE_TILES
    if compute == torch.float64:
        return SMALL_TILES_FP64
    return SMALL_TILES_BF16 if branch_dtype == torch.bfloat16 else SMALL_TILES


# Tiles of tl.dot operands the backward (the larger of the two) keeps in shared memory at once, by
# kind ([N × H], [N × C], [C × H]): one chunk's on sm_75; from sm_80 on, where the pipeliner
# prefetches the next chunks', up to 3, 6 and 3. An estimate fitted to earlier PTX, not a bound:
# over benchmarks/results/ptx-bounds.json the compiled backward used up to 1.5× it on sm_75 and
# 1.09× from sm_80 on (every launch there within its arch's shared memory; the survey checks).
STAGED_TILES = (1, 1, 1)
STAGED_TILES_PREFETCHED = (3, 6, 3)


def _shared_bytes(block_n: int, block_h: int, block_c: int, itemsize: int, target: Target) -> int:
    """Shared memory the kernels ask for at these blocks on ``target``, estimated (bytes)."""
    nh, nc, ch = STAGED_TILES_PREFETCHED if prefetches(target) else STAGED_TILES
    return (nh * block_n * block_h + nc * block_n * block_c + ch * block_c * block_h) * itemsize


def _block_c(N: int, C: int, h: int, branch_dtype: torch.dtype, compute: torch.dtype, target: Target) -> int:
    """Channels per chunk: the tile budget's, halved until the program's shared memory fits the
    target (at least :data:`MIN_DOT`; :func:`mlp_fits` says where even that does not fit)."""
    block_n, block_h = _batch_tile(N, h)
    itemsize = staged_itemsize(branch_dtype, compute, target)
    block_c = max(MIN_DOT, min(next_pow2(C), _tiles(branch_dtype, compute, target).chunk // max(block_n, block_h)))
    while block_c > MIN_DOT and _shared_bytes(block_n, block_h, block_c, itemsize, target) > target.shared_bytes:
        block_c //= 2
    return block_c


def _batch_tile(N: int, h: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_H): the batch and the hidden width padded for tl.dot."""
    return max(MIN_DOT, next_pow2(N)), max(MIN_DOT, next_pow2(h))


@triton.jit
def _round(v, BRANCH: tl.constexpr, EMULATE: tl.constexpr):
    """v as eager PyTorch would hold it in the branch dtype, back in v's dtype."""
    return cast(v, BRANCH, EMULATE).to(v.dtype)


@triton.jit
def _batch_rows(N, h, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    """The batch × hidden tile every program holds: (n, n_mask, j, j_mask, [n, j] mask)."""
    n = tl.arange(0, BLOCK_N)
    j = tl.arange(0, BLOCK_H)
    n_mask = n < N
    j_mask = j < h
    return n, n_mask, j, j_mask, n_mask[:, None] & j_mask[None, :]


@triton.jit
def _channel_chunk(c0, C, n, n_mask, BLOCK_C: tl.constexpr):
    """The chunk of channels from c0: (c, c_mask, offsets of [n, c] in an (N, C) tensor, their mask)."""
    c = c0 + tl.arange(0, BLOCK_C)
    c_mask = c < C
    return c, c_mask, n[:, None] * C + c[None, :], n_mask[:, None] & c_mask[None, :]


@triton.jit
def _bn_stats(u, mask, N, BATCH: tl.constexpr, rm_ptr, rv_ptr, idx, idx_mask, COMPUTE: tl.constexpr):
    """(mean, variance) per column of u [BLOCK_N × BLOCK]: the batch's (biased) or the running ones.
    N stays an integer (divisions by it keep the compute dtype, compiled or interpreted)."""
    if BATCH:
        mean = tl.sum(tl.where(mask, u, 0.0), axis=0) / N
        d = tl.where(mask, u - mean[None, :], 0.0)
        var = tl.sum(d * d, axis=0) / N
    else:
        mean = tl.load(rm_ptr + idx, mask=idx_mask, other=0.0).to(COMPUTE)
        var = tl.load(rv_ptr + idx, mask=idx_mask, other=1.0).to(COMPUTE)
    return mean, var


@triton.jit
def _bn_update_running(rm_ptr, rv_ptr, idx, idx_mask, mean, var, momentum, N):
    """running ← (1 − momentum)·running + momentum·batch, the variance unbiased, as nn.BatchNorm."""
    var = var * N / (N - 1)
    rm = tl.load(rm_ptr + idx, mask=idx_mask, other=0.0).to(mean.dtype)
    rv = tl.load(rv_ptr + idx, mask=idx_mask, other=0.0).to(mean.dtype)
    tl.store(rm_ptr + idx, ((1.0 - momentum) * rm + momentum * mean).to(rm_ptr.dtype.element_ty), mask=idx_mask)
    tl.store(rv_ptr + idx, ((1.0 - momentum) * rv + momentum * var).to(rv_ptr.dtype.element_ty), mask=idx_mask)


@triton.jit
def _bn_forward(
    u,
    mask,
    N,
    idx,
    idx_mask,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    eps,
    momentum,
    BATCH: tl.constexpr,
    UPDATE: tl.constexpr,
    BRANCH: tl.constexpr,
    EMULATE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """A BatchNorm over the rows of u [BLOCK_N × BLOCK] (columns ``idx``): (out rounded to the
    branch dtype, mean, 1/std); the running statistics updated when UPDATE. ``eps`` and
    ``momentum`` float64 scalars, used in COMPUTE."""
    mean, var = _bn_stats(u, mask, N, BATCH, rm_ptr, rv_ptr, idx, idx_mask, COMPUTE)
    # tl.full, not .to(): the interpreter hands scalars over as Python floats.
    invstd = 1.0 / tl.sqrt(var + tl.full([], eps, COMPUTE))
    if UPDATE:
        _bn_update_running(rm_ptr, rv_ptr, idx, idx_mask, mean, var, tl.full([], momentum, COMPUTE), N)
    gamma = tl.load(w_ptr + idx, mask=idx_mask, other=0.0).to(COMPUTE)
    beta = tl.load(b_ptr + idx, mask=idx_mask, other=0.0).to(COMPUTE)
    out = _round((u - mean[None, :]) * (invstd * gamma)[None, :] + beta[None, :], BRANCH, EMULATE)
    return out, mean, invstd


@triton.jit
def _bn_backward(
    g,
    mask,
    N,
    idx,
    idx_mask,
    u_ptr,
    stats_ptr,
    count,
    w_ptr,
    g_w_ptr,
    g_b_ptr,
    BATCH: tl.constexpr,
    BRANCH: tl.constexpr,
    EMULATE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """∂L/∂u of a BatchNorm given g = ∂L/∂out [BLOCK_N × BLOCK] (columns ``idx``), rounded to the
    branch dtype; Σ_n g·x̂ and Σ_n g stored at ``g_w_ptr`` and ``g_b_ptr``. u [N, count] at u_ptr,
    its mean and 1/std at stats_ptr and stats_ptr + count, as the forward saved them."""
    u = tl.load(u_ptr, mask=mask, other=0.0)
    mean = tl.load(stats_ptr + idx, mask=idx_mask, other=0.0)
    invstd = tl.load(stats_ptr + count + idx, mask=idx_mask, other=0.0)
    gamma = tl.load(w_ptr + idx, mask=idx_mask, other=0.0).to(COMPUTE)
    xhat = (u - mean[None, :]) * invstd[None, :]
    g = tl.where(mask, g, 0.0)
    g_beta = tl.sum(g, axis=0)
    g_gamma = tl.sum(g * xhat, axis=0)
    tl.store(g_w_ptr + idx, g_gamma.to(g_w_ptr.dtype.element_ty), mask=idx_mask)
    tl.store(g_b_ptr + idx, g_beta.to(g_b_ptr.dtype.element_ty), mask=idx_mask)
    if BATCH:
        g_u = (g - g_beta[None, :] / N - xhat * (g_gamma[None, :] / N)) * (gamma * invstd)[None, :]
    else:
        g_u = g * (gamma * invstd)[None, :]
    return tl.where(mask, _round(g_u, BRANCH, EMULATE), 0.0)


@triton.jit
def channel_mlp_fwd_kernel(
    p_ptr,  # (N, C) pooled means, compute dtype
    w1_ptr,  # (h, C)
    b1_ptr,  # (h)
    bn1_w_ptr,  # BN1's weight, bias, running mean and variance (h)
    bn1_b_ptr,
    bn1_rm_ptr,
    bn1_rv_ptr,
    w2_ptr,  # (C, h)
    b2_ptr,  # (C)
    bnc_w_ptr,  # BNc's (C); unused without HAS_BNC
    bnc_b_ptr,
    bnc_rm_ptr,
    bnc_rv_ptr,
    out_ptr,  # out: mc (N, C) at 0, then what the backward needs, compute dtype, at the offsets below
    N,
    C,
    h,
    # BN1's and BNc's eps and momentum: typed float64, as nn.BatchNorm holds them (a Python float
    # argument would be fp32 in a compiled kernel and fp64 under the interpreter); each is used in
    # the compute dtype, as eager's BatchNorm kernels use them.
    eps1: tl.float64,
    momentum1: tl.float64,
    epsc: tl.float64,
    momentumc: tl.float64,
    u1_offset,  # u1, a1 (N, h), u2 (N, C), mean1 and invstd1 (h), mean2 and invstd2 (C)
    a1_offset,
    u2_offset,
    mean1_offset,
    mean2_offset,
    BN1_BATCH: tl.constexpr,  # normalise with the batch's statistics (train mode), else the running ones
    BN1_UPDATE: tl.constexpr,  # and update the running ones
    HAS_BNC: tl.constexpr,  # the paper variant's final BN
    BNC_BATCH: tl.constexpr,
    BNC_UPDATE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BRANCH: tl.constexpr,  # the branch's dtype (autocast's, or x's)
    DOT: tl.constexpr,  # kernels.dot's constexprs (DOT is BRANCH)
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    n, n_mask, j, j_mask, nj_mask = _batch_rows(N, h, BLOCK_N, BLOCK_H)

    # u1 = p · W1ᵀ + b1, the channels in chunks.
    u1 = tl.zeros([BLOCK_N, BLOCK_H], dtype=COMPUTE)
    for c0 in range(0, C, BLOCK_C):
        c, c_mask, nc, nc_mask = _channel_chunk(c0, C, n, n_mask, BLOCK_C)
        p = tl.load(p_ptr + nc, mask=nc_mask, other=0.0)
        w1t = tl.load(w1_ptr + j[None, :] * C + c[:, None], mask=c_mask[:, None] & j_mask[None, :], other=0.0)
        u1 = dot(p, w1t, u1, DOT, PRECISION, EMULATE)
    u1 = _round(u1 + tl.load(b1_ptr + j, mask=j_mask, other=0.0).to(COMPUTE)[None, :], BRANCH, EMULATE)
    a1, mean1, invstd1 = _bn_forward(
        u1,
        nj_mask,
        N,
        j,
        j_mask,
        bn1_w_ptr,
        bn1_b_ptr,
        bn1_rm_ptr,
        bn1_rv_ptr,
        eps1,
        momentum1,
        BN1_BATCH,
        BN1_UPDATE,
        BRANCH,
        EMULATE,
        COMPUTE,
    )
    # ReLU as torch's: NaN stays NaN (tl.maximum returns the other operand on a GPU). Padding stays 0
    # even where a NaN batch statistic reached it: the next tl.dot sums over the padded columns.
    a1 = tl.where(nj_mask & ((a1 >= 0.0) | (a1 != a1)), a1, 0.0)
    nj = n[:, None] * h + j[None, :]
    tl.store(out_ptr + u1_offset + nj, u1, mask=nj_mask)
    tl.store(out_ptr + a1_offset + nj, a1, mask=nj_mask)
    tl.store(out_ptr + mean1_offset + j, mean1, mask=j_mask)
    tl.store(out_ptr + mean1_offset + h + j, invstd1, mask=j_mask)

    # u2 = a1 · W2ᵀ + b2 and BNc, the channels in chunks: each chunk holds the whole batch.
    for c0 in range(0, C, BLOCK_C):
        c, c_mask, nc, nc_mask = _channel_chunk(c0, C, n, n_mask, BLOCK_C)
        w2t = tl.load(w2_ptr + c[None, :] * h + j[:, None], mask=j_mask[:, None] & c_mask[None, :], other=0.0)
        u2 = dot(a1, w2t, tl.zeros([BLOCK_N, BLOCK_C], dtype=COMPUTE), DOT, PRECISION, EMULATE)
        u2 = _round(u2 + tl.load(b2_ptr + c, mask=c_mask, other=0.0).to(COMPUTE)[None, :], BRANCH, EMULATE)
        if HAS_BNC:
            mc, mean2, invstd2 = _bn_forward(
                u2,
                nc_mask,
                N,
                c,
                c_mask,
                bnc_w_ptr,
                bnc_b_ptr,
                bnc_rm_ptr,
                bnc_rv_ptr,
                epsc,
                momentumc,
                BNC_BATCH,
                BNC_UPDATE,
                BRANCH,
                EMULATE,
                COMPUTE,
            )
            tl.store(out_ptr + u2_offset + nc, u2, mask=nc_mask)
            tl.store(out_ptr + mean2_offset + c, mean2, mask=c_mask)
            tl.store(out_ptr + mean2_offset + C + c, invstd2, mask=c_mask)
        else:
            mc = u2
        tl.store(out_ptr + nc, mc, mask=nc_mask)


@triton.jit
def channel_mlp_bwd_kernel(
    gmc_ptr,  # (N, C) ∂L/∂mc in the branch dtype; out: ∂L/∂p over it, once read (values in the branch dtype)
    p_ptr,  # (N, C) pooled means, compute dtype
    save_ptr,  # the forward's out buffer (see channel_mlp_fwd_kernel)
    w1_ptr,  # (h, C)
    bn1_w_ptr,  # (h)
    w2_ptr,  # (C, h)
    bnc_w_ptr,  # (C); unused without HAS_BNC
    grad_ptr,  # out: the parameters' gradients at the offsets below, in the parameters' dtype
    N,
    C,
    h,
    u1_offset,
    a1_offset,
    u2_offset,
    mean1_offset,
    mean2_offset,
    g_w1_offset,  # grad: W1, b1, BN1 weight, bias, W2, b2, BNc weight, bias
    g_b1_offset,
    g_bn1_w_offset,
    g_bn1_b_offset,
    g_w2_offset,
    g_b2_offset,
    g_bnc_w_offset,
    g_bnc_b_offset,
    BN1_BATCH: tl.constexpr,
    HAS_BNC: tl.constexpr,
    BNC_BATCH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BRANCH: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    n, n_mask, j, j_mask, nj_mask = _batch_rows(N, h, BLOCK_N, BLOCK_H)
    nj = n[:, None] * h + j[None, :]
    grad_ty = grad_ptr.dtype.element_ty
    a1 = tl.load(save_ptr + a1_offset + nj, mask=nj_mask, other=0.0)

    # BNc and the second Linear, the channels in chunks; ∂L/∂a1 accumulates over them.
    g_a1 = tl.zeros([BLOCK_N, BLOCK_H], dtype=COMPUTE)
    for c0 in range(0, C, BLOCK_C):
        c, c_mask, nc, nc_mask = _channel_chunk(c0, C, n, n_mask, BLOCK_C)
        g_u2 = tl.load(gmc_ptr + nc, mask=nc_mask, other=0.0).to(COMPUTE)
        if HAS_BNC:
            g_u2 = _bn_backward(
                g_u2,
                nc_mask,
                N,
                c,
                c_mask,
                save_ptr + u2_offset + nc,
                save_ptr + mean2_offset,
                C,
                bnc_w_ptr,
                grad_ptr + g_bnc_w_offset,
                grad_ptr + g_bnc_b_offset,
                BNC_BATCH,
                BRANCH,
                EMULATE,
                COMPUTE,
            )
        g_u2 = tl.where(nc_mask, g_u2, 0.0)
        g_w2 = dot(tl.trans(g_u2), a1, tl.zeros([BLOCK_C, BLOCK_H], dtype=COMPUTE), DOT, PRECISION, EMULATE)
        w2_offs = c[:, None] * h + j[None, :]
        w2_mask = c_mask[:, None] & j_mask[None, :]
        tl.store(grad_ptr + g_w2_offset + w2_offs, _round(g_w2, BRANCH, EMULATE).to(grad_ty), mask=w2_mask)
        g_b2 = _round(tl.sum(g_u2, axis=0), BRANCH, EMULATE)
        tl.store(grad_ptr + g_b2_offset + c, g_b2.to(grad_ty), mask=c_mask)
        w2 = tl.load(w2_ptr + w2_offs, mask=w2_mask, other=0.0)
        g_a1 = dot(g_u2, w2, g_a1, DOT, PRECISION, EMULATE)

    # ReLU and BN1.
    # ReLU's backward as torch's threshold_backward: zero where a1 ≤ 0, so a NaN a1 passes g on.
    g_a1 = tl.where(a1 <= 0.0, 0.0, _round(g_a1, BRANCH, EMULATE))
    g_u1 = _bn_backward(
        g_a1,
        nj_mask,
        N,
        j,
        j_mask,
        save_ptr + u1_offset + nj,
        save_ptr + mean1_offset,
        h,
        bn1_w_ptr,
        grad_ptr + g_bn1_w_offset,
        grad_ptr + g_bn1_b_offset,
        BN1_BATCH,
        BRANCH,
        EMULATE,
        COMPUTE,
    )
    tl.store(grad_ptr + g_b1_offset + j, _round(tl.sum(g_u1, axis=0), BRANCH, EMULATE).to(grad_ty), mask=j_mask)

    # The first Linear, the channels in chunks: ∂L/∂W1 and ∂L/∂p, over ∂L/∂mc (every thread is
    # done reading it: the barrier makes sure).
    tl.debug_barrier()
    for c0 in range(0, C, BLOCK_C):
        c, c_mask, nc, nc_mask = _channel_chunk(c0, C, n, n_mask, BLOCK_C)
        p = tl.load(p_ptr + nc, mask=nc_mask, other=0.0)
        g_w1 = dot(tl.trans(g_u1), p, tl.zeros([BLOCK_H, BLOCK_C], dtype=COMPUTE), DOT, PRECISION, EMULATE)
        w1_offs = j[:, None] * C + c[None, :]
        w1_mask = j_mask[:, None] & c_mask[None, :]
        tl.store(grad_ptr + g_w1_offset + w1_offs, _round(g_w1, BRANCH, EMULATE).to(grad_ty), mask=w1_mask)
        w1 = tl.load(w1_ptr + w1_offs, mask=w1_mask, other=0.0)
        g_p = dot(g_u1, w1, tl.zeros([BLOCK_N, BLOCK_C], dtype=COMPUTE), DOT, PRECISION, EMULATE)
        tl.store(gmc_ptr + nc, cast(g_p, BRANCH, EMULATE), mask=nc_mask)


class MlpPlan(NamedTuple):
    """Block sizes and the offsets into the forward's out buffer for one (N, C, h, dtypes)."""

    meta: dict  # the kernels' shared block and dtype constexprs and num_warps
    scalars: dict  # the sizes and the offsets of u1, a1, u2, mean1 (then invstd1), mean2 (then invstd2) by name
    out_numel: int  # mc is at 0


def mlp_fits(N: int, h: int, branch_dtype: torch.dtype, compute: torch.dtype, target: Target) -> str | None:
    """Why one program cannot hold a batch of ``N`` at hidden width ``h`` with the branch in
    ``branch_dtype`` (statistics in ``compute``) on ``target`` (None when it can): its registers
    hold the [N × h] tiles (padded) up to a budget per kind of tl.dot, its shared memory the
    tiles of the narrowest chunk."""
    block_n, block_h = _batch_tile(N, h)
    budget = _tiles(branch_dtype, compute, target).batch_tile
    if block_n * block_h > budget:
        return (
            f"a batch of {N} at h={h} ({block_n} × {block_h} padded) is more than the channel branch's one "
            f"program holds in {branch_dtype} ({budget} values)"
        )
    shared = _shared_bytes(block_n, block_h, MIN_DOT, staged_itemsize(branch_dtype, compute, target), target)
    if shared > target.shared_bytes:
        return (
            f"a batch of {N} at h={h} in {branch_dtype} needs {shared} bytes of shared memory in the channel "
            f"branch's one program, more than sm_{target.arch}'s {target.shared_bytes}"
        )
    return None


@functools.lru_cache(maxsize=1024)
def mlp_plan(N: int, C: int, h: int, branch_dtype: torch.dtype, compute: torch.dtype, target: Target) -> MlpPlan:
    """The launch plan of both kernels; cached."""
    block_n, block_h = _batch_tile(N, h)
    block_c = _block_c(N, C, h, branch_dtype, compute, target)
    u1 = N * C
    a1, u2 = u1 + N * h, u1 + 2 * N * h
    mean1 = u2 + N * C
    mean2 = mean1 + 2 * h
    return MlpPlan(
        meta={
            "BLOCK_N": block_n,
            "BLOCK_H": block_h,
            "BLOCK_C": block_c,
            "BRANCH": tl_dtype(branch_dtype),
            **dot_meta(branch_dtype),
            "COMPUTE": tl_dtype(compute),
            **all_registers(MLP_WARPS),
        },
        scalars={
            "N": N,
            "C": C,
            "h": h,
            "u1_offset": u1,
            "a1_offset": a1,
            "u2_offset": u2,
            "mean1_offset": mean1,
            "mean2_offset": mean2,
        },
        out_numel=mean2 + 2 * C,
    )


def channel_mlp_fwd(p, w1, b1, bn1: BatchNorm, w2, b2, bnc: BatchNorm | None, branch_dtype):
    """The channel branch on the pooled means ``p`` (N, C) (compute dtype): one buffer holding mc
    (N, C), its first N·C values (rounded to ``branch_dtype``), then what :func:`channel_mlp_bwd`
    needs.

    w1 (h, C), b1 (h), w2 (C, h), b2 (C); ``bnc`` None for the released code's branch. Running
    statistics are updated in place where the BatchNorms' modes say so.
    """
    N, C = p.shape
    h = w1.shape[0]
    plan = mlp_plan(N, C, h, branch_dtype, p.dtype, target_of(p.device))
    out = torch.empty(plan.out_numel, device=p.device, dtype=p.dtype)
    some = bn1.weight
    with launch_guard(channel_mlp_fwd_kernel, p.device) as launch:
        launch[(1,)](
            p_ptr=p,
            w1_ptr=w1,
            b1_ptr=b1,
            bn1_w_ptr=bn1.weight,
            bn1_b_ptr=bn1.bias,
            bn1_rm_ptr=bn1.running_mean if bn1.running_mean is not None else some,
            bn1_rv_ptr=bn1.running_var if bn1.running_var is not None else some,
            w2_ptr=w2,
            b2_ptr=b2,
            bnc_w_ptr=bnc.weight if bnc is not None else some,
            bnc_b_ptr=bnc.bias if bnc is not None else some,
            bnc_rm_ptr=bnc.running_mean if bnc is not None and bnc.running_mean is not None else some,
            bnc_rv_ptr=bnc.running_var if bnc is not None and bnc.running_var is not None else some,
            out_ptr=out,
            eps1=bn1.mode.eps,
            momentum1=bn1.mode.momentum,
            epsc=bnc.mode.eps if bnc is not None else 0.0,
            momentumc=bnc.mode.momentum if bnc is not None else 0.0,
            **plan.scalars,
            BN1_BATCH=bn1.mode.batch_stats,
            BN1_UPDATE=bn1.mode.update,
            HAS_BNC=bnc is not None,
            BNC_BATCH=bnc is not None and bnc.mode.batch_stats,
            BNC_UPDATE=bnc is not None and bnc.mode.update,
            **plan.meta,
        )
    return out


# channel_mlp_bwd_kernel's offsets into grad, in the order of channel_mlp_bwd's grad_offsets.
GRAD_OFFSETS = (
    "g_w1_offset",
    "g_b1_offset",
    "g_bn1_w_offset",
    "g_bn1_b_offset",
    "g_w2_offset",
    "g_b2_offset",
    "g_bnc_w_offset",
    "g_bnc_b_offset",
)


def channel_mlp_bwd(gmc, p, save, w1, bn1: BatchNorm, w2, bnc: BatchNorm | None, grads, grad_offsets):
    """The channel branch's backward: writes the parameters' gradients into ``grads`` at
    ``grad_offsets`` (W1, b1, BN1 weight and bias, W2, b2, then BNc weight and bias when ``bnc``)
    and ∂L/∂p over ``gmc``.

    gmc (N, C) ∂L/∂mc in the branch dtype; p and save as :func:`channel_mlp_fwd` had and made them.
    """
    N, C = p.shape
    h = w1.shape[0]
    plan = mlp_plan(N, C, h, gmc.dtype, p.dtype, target_of(p.device))
    want = len(GRAD_OFFSETS) - (2 if bnc is None else 0)  # BNc's weight and bias last
    if len(grad_offsets) != want:
        raise ValueError(f"grad_offsets must hold {want} offsets (bnc: {bnc is not None}), got {len(grad_offsets)}")
    # Without BNc its gradients' offsets are never read.
    offsets = {"g_bnc_w_offset": 0, "g_bnc_b_offset": 0} | dict(zip(GRAD_OFFSETS, grad_offsets))
    with launch_guard(channel_mlp_bwd_kernel, p.device) as launch:
        launch[(1,)](
            gmc_ptr=gmc,
            p_ptr=p,
            save_ptr=save,
            w1_ptr=w1,
            bn1_w_ptr=bn1.weight,
            w2_ptr=w2,
            bnc_w_ptr=bnc.weight if bnc is not None else bn1.weight,
            grad_ptr=grads,
            **plan.scalars,
            **offsets,
            BN1_BATCH=bn1.mode.batch_stats,
            HAS_BNC=bnc is not None,
            BNC_BATCH=bnc is not None and bnc.mode.batch_stats,
            **plan.meta,
        )
