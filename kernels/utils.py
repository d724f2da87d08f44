"""Facts the kernels and the package share, each written here once. Imports no triton (nor does
importing ``bam_fused.kernels`` itself): :mod:`bam_fused.common` takes these from here, and must be
importable before ``bam_fused.common.interpret_without_cuda()`` decides whether the kernels are
compiled or interpreted.
"""

import os

import torch

# The gate's combines, in the order of the kernels' COMBINE constexpr (``kernels.gate_math``).
COMBINES = ("sum", "product", "max")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the gate computes in for inputs of ``dtype``: float64 stays (gradcheck), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉. Plain Python: ``triton.cdiv`` goes through Triton's constexpr machinery, ~10 µs a
    call on the host, and a backward took a dozen of them."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of 2 ≥ n (1 for n ≤ 1); plain Python for the reason of :func:`cdiv`."""
    return 1 << max(0, n - 1).bit_length()


# Triton's own reading of TRITON_INTERPRET (triton.knobs: getenv_bool), without importing triton.
_TRUE = ("1", "true", "on", "yes", "y")


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE
