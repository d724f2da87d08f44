"""The GPU a launch is planned for: its arch, the shared memory one program may use, its
multiprocessors. Read from the device at run time; named explicitly where launches are planned
for a GPU that is not here (the PTX report compiles for every arch in :data:`SHARED_BYTES`;
the kernels' pre-flight check plans on meta tensors for x's device).

The plans take block shapes that fit every arch below at the shapes a ResNet or a test uses;
what still depends on the target (a one-program kernel's bound, the grid's split) reads it here.
"""

import contextlib
import functools
import threading
from typing import NamedTuple

import torch

# Dynamic shared memory one program may use (the opt-in maximum per block), bytes, by compute
# capability (10·major + minor): the archs triton 3.6 compiles for that users have — T4 (75),
# A100 (80), RTX 30 / A10 (86), RTX 40 / L4 (89), H100 / H200 (90), B200 (100), RTX 50 (120).
SHARED_BYTES = {75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
# 32-bit registers one program may use (65536 on every arch above), and one thread (255).
PROGRAM_REGISTERS = 65536
THREAD_REGISTERS = 255
# Multiprocessors assumed where a target is named by its arch (an H100's): only the grid's
# split depends on it, never a block shape.
DEFAULT_SMS = 132


class Target(NamedTuple):
    arch: int  # compute capability, 10·major + minor (90 for sm_90); 0 for the interpreter
    shared_bytes: int  # dynamic shared memory one program may use
    sms: int  # multiprocessors: the grids' splits fill them


# Triton's interpreter: one program at a time on the CPU, no shared memory to run out of; its
# plans take the block shapes a GPU from sm_80 on would.
INTERPRETER = Target(0, max(SHARED_BYTES.values()), 1)


def arch_target(arch: int, sms: int = DEFAULT_SMS) -> Target:
    """The target of an arch in :data:`SHARED_BYTES` (e.g. 90), for planning without its GPU."""
    if arch not in SHARED_BYTES:
        raise ValueError(f"arch must be one of {sorted(SHARED_BYTES)}, got {arch}")
    return Target(arch, SHARED_BYTES[arch], sms)


# Per thread: the target planned_for() names, while it is active.
_planned = threading.local()


@contextlib.contextmanager
def planned_for(target: Target | None):
    """Inside the ``with`` (this thread), launches on meta tensors are planned for ``target``
    (None: as outside)."""
    outer = getattr(_planned, "target", None)
    _planned.target = target if target is not None else outer
    try:
        yield
    finally:
        _planned.target = outer


def target_of(device: torch.device) -> Target:
    """The target of a launch on ``device``: a CUDA device's own; the interpreter's for CPU
    tensors; for meta tensors the one :func:`planned_for` names (else the interpreter's)."""
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "meta":
        return getattr(_planned, "target", None) or INTERPRETER
    return INTERPRETER


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(10 * props.major + props.minor, props.shared_memory_per_block_optin, props.multi_processor_count)


# From these archs on, tl.dot in these dtypes runs on tensor cores with sm_80's mma shapes, whose
# operands stream through registers a fraction at a time: the plans take their large tiles there.
# Elsewhere (fp32 "ieee" and fp64 dots, and any on sm_75: Turing has no bf16 mma, and its fp16
# m16n8k8 spilled at the large tiles) the dot runs on FMA units, each thread holding whole rows
# and columns of its operands: the plans take small tiles.
_LARGE_TILES_FROM = {torch.float16: 80, torch.bfloat16: 80}
# The interpreter plans as a GPU from sm_80 on would.
_INTERPRETER_PLANS_AS = 80


def large_tiles(dot_dtype: torch.dtype, target: Target) -> bool:
    """Whether the plans take their large tiles for ``tl.dot`` on operands of ``dot_dtype`` on ``target``."""
    return (target.arch or _INTERPRETER_PLANS_AS) >= _LARGE_TILES_FROM.get(dot_dtype, 1000)


def all_registers(num_warps: int) -> dict:
    """Launch options: ``num_warps``, and every register a thread of such a program may have
    (``maxnreg``). Without it ptxas keeps a 256-thread program to 128 registers on some archs, so
    that two fit an SM, and spills instead: the plans size their tiles to the registers, not to
    occupancy."""
    return {"num_warps": num_warps, "maxnreg": min(THREAD_REGISTERS, PROGRAM_REGISTERS // (32 * num_warps))}


def prefetches(target: Target) -> bool:
    """Whether Triton's pipeliner prefetches a loop's next tl.dot operands into shared memory
    beside the current ones (cp.async, from sm_80 on; the interpreter plans as sm_80 would), so that
    a plan's shared memory holds several chunks' tiles rather than one's."""
    return (target.arch or _INTERPRETER_PLANS_AS) >= 80


def staged_itemsize(dot_dtype: torch.dtype, compute: torch.dtype, target: Target) -> int:
    """Bytes per value of the tl.dot operands a plan stages in shared memory: the dot's dtype on
    tensor cores (:func:`large_tiles`), else the compute dtype the FMA dot converts them to."""
    return dot_dtype.itemsize if large_tiles(dot_dtype, target) else compute.itemsize
