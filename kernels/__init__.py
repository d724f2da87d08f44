"""Triton kernels of the fused BAM gate and their launchers (no nn.Module code here).

Each file holds its kernels with the launcher that owns their plan and their outputs:

    gate_fwd.py    gate_fwd_kernel                          launched by gate_fwd(x, mc, ms, ...) -> y
    gate_bwd.py    gate_bwd_kernel, gate_bwd_reduce_kernel  launched by gate_bwd(g, x, mc, ms, ...) -> (gx, gmc, gms)
    gate_math.py   the element-wise formula both share
    layout.py      strides of NCHW / channels_last, tile shapes, shared launch constants, launch_guard
    ptx_report.py  ahead-of-time compilation to PTX without a GPU (python -m bam_fused.kernels.ptx_report)

The autograd bindings live in :mod:`bam_fused.ops`.
"""

from .gate_bwd import BwdBuffers, BwdConfig, bwd_buffers, bwd_config, bwd_plan, gate_bwd
from .gate_fwd import FwdConfig, fwd_config, fwd_plan, gate_fwd

__all__ = [
    "BwdBuffers",
    "BwdConfig",
    "FwdConfig",
    "bwd_buffers",
    "bwd_config",
    "bwd_plan",
    "fwd_config",
    "fwd_plan",
    "gate_bwd",
    "gate_fwd",
]
