"""bam_fused: BAM (Bottleneck Attention Module) fused into Triton kernels, forward and backward.

    from bam_fused import FusedBAM          # drop-in for an eager BAM
    y = FusedBAM(256)(x)                     # x: (N, 256, H, W)

Public API: :func:`bam_gate`, :class:`BAM`, :class:`FusedBAM`, :func:`convert_to_fused`,
:class:`ChannelGate`, :class:`SpatialGate`, :mod:`reference` (the pure-PyTorch gate the kernels
are tested against).
"""

import importlib

# Public name → the module that defines it. Imported on first use (PEP 562), not here: importing
# ``bam_fused.common`` must not import triton, because ``@triton.jit`` decides when a kernel is
# defined whether it is compiled or interpreted, and ``common.interpret_without_cuda()`` makes
# that choice on a machine without CUDA.
_PUBLIC = {
    "BAM": "modules",
    "FusedBAM": "modules",
    "convert_to_fused": "modules",
    "ChannelGate": "branches",
    "SpatialGate": "branches",
    "bam_gate": "ops",
}

__all__ = [*sorted(_PUBLIC), "reference"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    if name == "reference":
        return importlib.import_module(".reference", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
