"""``tl.dot`` and rounding in a given dtype, the same on a GPU and under Triton's interpreter.

On a GPU the operands are cast to the dtype (bf16/fp16 on tensor cores; fp32 with
``input_precision="ieee"``, which a GPU would otherwise round to TF32) and accumulate in fp32.
Triton 3.6's interpreter gets bfloat16 wrong twice: it multiplies bf16 tiles into garbage, and it
converts float32 to bfloat16 by truncation where a GPU (and PyTorch) rounds to nearest even. So
under the interpreter (``EMULATE``), bf16 values are rounded to nearest even by integer
arithmetic on their bits and multiplied in float32: the same products, exact sums.
"""

import torch
import triton
import triton.language as tl

from .layout import tl_dtype
from .utils import interpreter_requested

# tl.dot needs every dimension ≥ 16 on a GPU (the interpreter takes any): pad and mask.
MIN_DOT = 16


@triton.jit
def _round_bf16(v):
    """float32 v rounded to the nearest bfloat16 (ties to even), still float32; NaN stays NaN."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))


@triton.jit
def cast(v, DTYPE: tl.constexpr, EMULATE: tl.constexpr):
    """v converted to DTYPE, rounding to nearest as a GPU does (see the module docstring)."""
    if EMULATE:
        return _round_bf16(v.to(tl.float32)).to(DTYPE)
    return v.to(DTYPE)


@triton.jit
def dot(a, b, acc, DOT: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc + a @ b with a and b rounded to DOT (acc's dtype: float32, or float64)."""
    if EMULATE:
        a = _round_bf16(a.to(tl.float32)).to(acc.dtype)
        b = _round_bf16(b.to(tl.float32)).to(acc.dtype)
        return tl.dot(a, b, acc=acc, out_dtype=acc.dtype)
    return tl.dot(a.to(DOT), b.to(DOT), acc=acc, input_precision=PRECISION, out_dtype=acc.dtype)


def emulate_bf16(dtype: torch.dtype) -> bool:
    """Whether values of ``dtype`` need the interpreter's bf16 emulation (EMULATE)."""
    return dtype == torch.bfloat16 and interpreter_requested()


def dot_meta(dtype: torch.dtype) -> dict:
    """The constexprs of :func:`dot` for operands of ``dtype``."""
    return {
        "DOT": tl_dtype(dtype),
        "PRECISION": "ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        "EMULATE": emulate_bf16(dtype),
    }
