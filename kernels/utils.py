"""Facts the kernels and the package share, each written here once. Imports no triton (nor does
importing ``bam_fused.kernels`` itself): :mod:`bam_fused.common` takes these from here, and must be
importable before ``bam_fused.common.interpret_without_cuda()`` decides whether the kernels are
compiled or interpreted.
"""

import os
from typing import NamedTuple

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


# One BatchNorm as a call runs it: the package fills these records from an nn.BatchNorm, the
# channel-MLP kernels and the package's aten calls read them.
class BatchNormMode(NamedTuple):
    """How one BatchNorm runs in a call: ``nn.BatchNorm.forward``'s decisions, replicated."""

    batch_stats: bool  # normalise with the batch's statistics (training, or no running ones)
    update: bool  # update the running statistics
    cumulative: bool  # by 1 / num_batches_tracked (momentum=None), found on the device
    momentum: float  # by this factor otherwise (0.0 when they are not updated)
    eps: float
    running: bool  # the call hands over the running statistics (read, or updated)
    counted: bool  # the call increments num_batches_tracked


class BatchNorm(NamedTuple):
    """One BatchNorm of a call: its parameters (first, as a layer's pair), mode and buffers (None
    where the mode takes none)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mode: BatchNormMode
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    count: torch.Tensor | None  # num_batches_tracked
