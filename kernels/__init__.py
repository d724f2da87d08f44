"""Triton kernels of the fused BAM gate and their launchers (no nn.Module code here).

``gate_fwd``: :func:`launch_gate_fwd` / :data:`gate_fwd_kernel`;
``gate_bwd``: :func:`gate_bwd` = :func:`launch_gate_bwd` (:data:`gate_bwd_kernel`) then
:func:`launch_gate_bwd_reduce` (:data:`gate_bwd_reduce_kernel`);
``gate_math``: the element-wise formula both share; ``layout``: strides and tile shapes;
``inspect``: ahead-of-time compilation to PTX without a GPU.
"""

from .gate_bwd import (
    bwd_config,
    bwd_grid,
    bwd_partial_shapes,
    bwd_plan,
    gate_bwd,
    gate_bwd_kernel,
    gate_bwd_reduce_kernel,
    launch_gate_bwd,
    launch_gate_bwd_reduce,
)
from .gate_fwd import fwd_config, fwd_plan, gate_fwd_kernel, launch_gate_fwd

__all__ = [
    "bwd_config",
    "bwd_grid",
    "bwd_partial_shapes",
    "bwd_plan",
    "fwd_config",
    "fwd_plan",
    "gate_bwd",
    "gate_bwd_kernel",
    "gate_bwd_reduce_kernel",
    "gate_fwd_kernel",
    "launch_gate_bwd",
    "launch_gate_bwd_reduce",
    "launch_gate_fwd",
]
