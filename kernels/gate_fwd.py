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
from .layout import TILE_BYTES, cdiv, compute_dtype, config_key, layout_of, tile_shape


@triton.jit
def gate_fwd_kernel(
    x_ptr, mc_ptr, ms_ptr, y_ptr,
    C, HW,
    stride_n, stride_c, stride_hw,
    num_c_blocks, num_hw_blocks,
    COMBINE: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, INT64: tl.constexpr, COMPUTE: tl.constexpr,
):  # fmt: skip
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


def fwd_config(C: int, HW: int, channels_last: bool, element_size: int,
               tile_bytes: int = TILE_BYTES, max_fast: int = 1024) -> dict:  # fmt: skip
    """Block shape and warps for the forward: a TILE_BYTES tile, the fast axis up to 1024 wide, 4 warps
    (``python -m benchmarks.tune`` varies the tile and the fast axis)."""
    block_c, block_hw = tile_shape(C, HW, channels_last, tile_bytes // element_size, max_fast)
    return {"BLOCK_C": block_c, "BLOCK_HW": block_hw, "num_warps": 4}


class FwdPlan(NamedTuple):
    """What a forward launch derives from x's shape, layout and dtype and the config."""

    grid: tuple
    args: tuple  # the kernel's scalar arguments, in order after the pointers
    meta: dict  # its block constexprs and num_warps


def fwd_plan(x, config: dict | None = None) -> FwdPlan:
    """The launch plan for ``x`` (N, C, H, W) with ``config`` (None: :func:`fwd_config`'s), cached."""
    return _fwd_plan(x.shape, x.stride(), x.dtype, config_key(config))


@functools.lru_cache(maxsize=1024)
def _fwd_plan(shape, strides, dtype, config_items) -> FwdPlan:
    N, C, H, W = shape
    HW = H * W
    lay = layout_of(shape, strides)
    cfg = fwd_config(C, HW, lay.channels_last, dtype.itemsize) if config_items is None else dict(config_items)
    num_c_blocks = cdiv(C, cfg["BLOCK_C"])
    num_hw_blocks = cdiv(HW, cfg["BLOCK_HW"])
    return FwdPlan(
        grid=(N * num_c_blocks * num_hw_blocks,),
        args=(C, HW, lay.stride_n, lay.stride_c, lay.stride_hw, num_c_blocks, num_hw_blocks),
        meta={"BLOCK_C": cfg["BLOCK_C"], "BLOCK_HW": cfg["BLOCK_HW"], "INT64": cfg.get("INT64", lay.int64),
              "COMPUTE": compute_dtype(dtype), "num_warps": cfg.get("num_warps", 4)},
    )  # fmt: skip


def launch_gate_fwd(x, mc, ms, y, *, combine: str, residual: bool, config: dict | None = None) -> torch.Tensor:
    """Write the gated ``x`` into ``y``.

    Shapes: x, y (N, C, H, W), same strides, contiguous or channels_last; mc (N, C) contiguous
    or None; ms (N, H·W) contiguous or None, not both None (any shape holding those elements in
    that order will do: only the pointers are used). ``config`` overrides the block
    heuristic (``BLOCK_C``, ``BLOCK_HW``, ``num_warps``; ``INT64`` forces 64-bit offsets);
    tests use it to force many tiles and the int64 path on small tensors.
    Returns ``y``.
    """
    if x.numel() == 0:
        return y
    plan = fwd_plan(x, config)
    gate_fwd_kernel[plan.grid](
        x, mc if mc is not None else x, ms if ms is not None else x, y, *plan.args,
        COMBINE=COMBINE_CODES[combine], HAS_MC=mc is not None, HAS_MS=ms is not None, RESIDUAL=residual,
        **plan.meta,
    )  # fmt: skip
    return y
