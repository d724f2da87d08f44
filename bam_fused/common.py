"""Facts shared by the package, the benchmarks and the tests: each is written here once (those the
kernels need too are written in :mod:`bam_fused.kernels.utils` and taken from there).

Nothing here imports triton: :func:`interpret_without_cuda` must run before the kernels are
imported, because ``@triton.jit`` decides at decoration time whether a kernel is compiled or
interpreted.
"""

import os

import torch

# The kernels' facts the package uses too (bam_fused.kernels.utils imports no triton).
from .kernels.utils import COMBINES, compute_dtype, interpreter_requested  # noqa: F401 (re-exported)

# Input dtypes of the gate and the module, and the short names the command-line tools use.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
FLOAT_DTYPES = tuple(DTYPES.values())

# Options of the public API (ARCHITECTURE.md, "The contract the code keeps").
VARIANTS = ("paper", "official")
VARIANT_COMBINE = {"paper": "sum", "official": "product"}  # the combine of a module built with combine=None
BRANCHES = ("both", "channel", "spatial")
BACKENDS = ("auto", "triton", "reference")
# The gate's modes: name -> (combine, has mc, has ms); "channel" / "spatial" are the one-branch gates.
GATE_MODES = {
    "sum": ("sum", True, True),
    "product": ("product", True, True),
    "max": ("max", True, True),
    "channel": ("sum", True, False),
    "spatial": ("sum", False, True),
}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

# (N, C, H, W) of the BAM inputs in a ResNet-50 (after layer1..3, batch 64 at 224²) and in a
# CIFAR ResNet-18 (batch 128 at 32²): the shapes every measurement and report is made at.
RESNET50_BAM_SHAPES = ((64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14))
CIFAR_BAM_SHAPES = ((128, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 on CPU (the absolute norm when ``expected`` is 0)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    denom = e.norm().item()
    return (a - e).norm().item() / (denom or 1.0)


def interpret_without_cuda() -> bool:
    """Without CUDA, ask Triton to interpret the kernels on CPU tensors (unless the caller already
    chose); returns whether CUDA is there. Call before any kernel of ``bam_fused.kernels`` is first imported."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return cuda
