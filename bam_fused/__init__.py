"""bam_fused: BAM (Bottleneck Attention Module) with its gate fused into Triton kernels.

    from bam_fused import FusedBAM          # drop-in for an eager BAM
    y = FusedBAM(256)(x)                     # x: (N, 256, H, W)

Public API: :func:`bam_gate`, :class:`BAM`, :class:`FusedBAM`, :func:`convert_to_fused`,
:mod:`reference` (the pure-PyTorch gate the kernels are tested against).
"""

from . import reference
from .branches import ChannelGate, SpatialGate
from .modules import BAM, FusedBAM, convert_to_fused
from .ops import bam_gate

__all__ = ["BAM", "ChannelGate", "FusedBAM", "SpatialGate", "bam_gate", "convert_to_fused", "reference"]
__version__ = "0.1.0"
