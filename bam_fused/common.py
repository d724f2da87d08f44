"""Facts shared by the package, its kernels, the benchmarks and the tests: each is written here once.

Nothing here imports triton: :func:`interpret_without_cuda` must run before the kernels are
imported, because ``@triton.jit`` decides at decoration time whether a kernel is compiled or
interpreted.
"""

import os

import torch

# Input dtypes of the gate and the module, and the short names the command-line tools use.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
FLOAT_DTYPES = tuple(DTYPES.values())

# Options of the public API (ARCHITECTURE.md, "The contract the code keeps").
COMBINES = ("sum", "product", "max")
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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 on CPU (the absolute norm when ``expected`` is 0)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    denom = e.norm().item()
    return (a - e).norm().item() / (denom or 1.0)


# Triton's own reading of TRITON_INTERPRET (triton.knobs: getenv_bool), without importing triton.
_TRUE = ("1", "true", "on", "yes", "y")


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def interpret_without_cuda() -> bool:
    """Without CUDA, ask Triton to interpret the kernels on CPU tensors (unless the caller already
    chose); returns whether CUDA is there. Call before ``bam_fused.kernels`` is first imported."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return cuda
