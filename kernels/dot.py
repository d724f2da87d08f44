"""``tl.dot`` in a given operand dtype, the same on a GPU and under Triton's interpreter.

On a GPU the operands are cast to the dtype (bf16/fp16 on tensor cores; fp32 with
``input_precision="ieee"``, which a GPU would otherwise round to TF32) and accumulate in fp32.
Triton 3.6's interpreter multiplies bfloat16 tiles wrongly (garbage, not rounding), so there
the operands are rounded to the dtype and multiplied in float32: the same products, exact sums.
"""

import torch
import triton
import triton.language as tl

from ..common import interpreter_requested
from .layout import tl_dtype

# tl.dot needs every dimension ≥ 16 on a GPU (the interpreter takes any): pad and mask.
MIN_DOT = 16


@triton.jit
def dot(a, b, acc, DOT: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc + a @ b with a and b rounded to DOT (acc's dtype: float32, or float64)."""
    if EMULATE:
        return tl.dot(a.to(DOT).to(acc.dtype), b.to(DOT).to(acc.dtype), acc=acc, out_dtype=acc.dtype)
    return tl.dot(a.to(DOT), b.to(DOT), acc=acc, input_precision=PRECISION, out_dtype=acc.dtype)


def dot_meta(dtype: torch.dtype) -> dict:
    """The constexprs of :func:`dot` for operands of ``dtype``."""
    return {
        "DOT": tl_dtype(dtype),
        "PRECISION": "ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        "EMULATE": dtype == torch.bfloat16 and interpreter_requested(),
    }
