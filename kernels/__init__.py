"""Triton kernels of the fused BAM module and their launchers (no autograd, no nn.Module code here).

Each kernel file holds its kernels with the launcher that owns their plan and their outputs:

    gate_fwd.py     the gate's forward: y = x · (1 + σ(mc ⊕ ms)), gate_fwd(x, mc, ms, ...) -> y
    gate_bwd.py     the gate's backward: stage one over g and x, the fixed-order reduction; gate_bwd(...)
    pool_reduce.py  the module's first pass: pooled-mean partials and the 1×1 reduce z0 from one read of x
    channel_mlp.py  the channel branch in one program: channel_mlp_fwd, channel_mlp_bwd
    input_grad.py   the module's last pass: gx written once, the reduce convolution's weight gradient

and what they share:

    gate_math.py    the gate's element-wise formula (forward and backward)
    dot.py          tl.dot and rounding in a given dtype (the interpreter's bf16 emulated)
    layout.py       strides of NCHW / channels_last, tile shapes, launch_guard, captured launches
    target.py       the GPU a launch is planned for: arch, shared memory, SMs; per-arch limits
    utils.py        facts the package shares (combines, compute dtype, cdiv, the BatchNorm record): no triton

The names below are imported on first use (PEP 562): importing this package (and so
``bam_fused.kernels.utils``, which :mod:`bam_fused.common` reads) defines no kernel, so
``bam_fused.common.interpret_without_cuda()`` still decides whether they are compiled or
interpreted. The autograd bindings live in :mod:`bam_fused.ops` and :mod:`bam_fused.fused_bam`.
"""

import importlib
import sys
import types

# Public name → the module that defines it.
_PUBLIC = {
    "BwdBuffers": "gate_bwd",
    "BwdConfig": "gate_bwd",
    "bwd_buffers": "gate_bwd",
    "bwd_config": "gate_bwd",
    "bwd_plan": "gate_bwd",
    "gate_bwd": "gate_bwd",
    "FwdConfig": "gate_fwd",
    "fwd_config": "gate_fwd",
    "fwd_plan": "gate_fwd",
    "gate_fwd": "gate_fwd",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    """This package, whose attributes ``gate_fwd`` and ``gate_bwd`` stay the launchers: the import
    system names each submodule on its package when it is first imported, and two submodules
    share their launchers' names (as they did when this file imported the launchers itself)."""

    def __setattr__(self, name, value):
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
