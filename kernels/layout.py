"""How the launchers see a feature map: strides over (n, c, hw), the layouts taken as they are,
tile shapes, and the constants every launcher shares.

The kernels address x[n, c, hw] as ``n * stride_n + c * stride_c + hw * stride_hw``; both
memory formats a CNN produces collapse (h, w) into one hw axis of a single stride:

    contiguous NCHW   (C·HW, HW, 1)  the fast axis is hw
    channels_last     (HW·C, 1, C)   the fast axis is c

Any other layout is copied once to NCHW (:func:`as_kernel_layout`).
"""

import contextlib
import functools
import threading
from typing import NamedTuple

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .utils import compute_dtype, next_pow2

# Warps per program of every launch: 4 won every sweep on an H200 (benchmarks/NOTES.md).
NUM_WARPS = 4
# Offsets switch to 64 bits from this many elements of x on.
INT64_FROM = 2**31
TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


class GateLayout(NamedTuple):
    stride_n: int
    stride_c: int
    stride_hw: int
    channels_last: bool
    int64: bool  # offsets need 64 bits


def x_scalars(shape: tuple, lay: GateLayout) -> dict:
    """A 4-D x's sizes and strides over (n, c, hw) by the kernels' parameter names: C, HW, stride_n,
    stride_c and stride_hw, for x of ``shape`` (N, C, H, W) laid out as ``lay``."""
    _, c, h, w = shape
    return {"C": c, "HW": h * w, "stride_n": lay.stride_n, "stride_c": lay.stride_c, "stride_hw": lay.stride_hw}


@functools.lru_cache(maxsize=1024)
def layout_of(shape: tuple, strides: tuple) -> GateLayout:
    """Strides of a 4-D x of ``shape`` (N, C, H, W) and ``strides`` as the kernels use them;
    cached, since the launch plans ask on every cache miss.

    Raises ValueError for a layout that is neither contiguous nor channels_last.
    """
    n, c, h, w = shape
    hw = h * w
    int64 = n * c * hw >= INT64_FROM
    # torch's own contiguity rules (size-1 and empty dims), on a meta tensor: no data, no device.
    probe = torch.empty_strided(shape, strides, device="meta")
    if probe.is_contiguous():
        return GateLayout(c * hw, hw, 1, False, int64)
    if probe.is_contiguous(memory_format=torch.channels_last):
        return GateLayout(hw * c, 1, c, True, int64)
    raise ValueError(f"x must be contiguous or channels_last, got shape {tuple(shape)} with strides {tuple(strides)}")


def as_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself when the kernels address it by strides (NCHW or channels_last), else one NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def hw_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """Strides of a 4-D t over (n, c, hw) when (h, w) collapse into one axis of a single stride
    (any dense layout, and expanded ones such as the stride-0 gradient of ``y.sum()``); None when
    they do not."""
    stride_n, stride_c, stride_h, stride_w = t.stride()
    _, _, H, W = t.shape
    if W == 1:
        return stride_n, stride_c, stride_h
    if H == 1 or stride_h == W * stride_w:
        return stride_n, stride_c, stride_w
    return None


def hw_addressed(t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """t (of x's shape) and its strides over (n, c, hw): t itself where (h, w) collapse
    (:func:`hw_strides`), else one copy laid out like x (x in a kernel layout)."""
    strides = hw_strides(t)
    if strides is None:
        t = t.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)
        strides = hw_strides(t)
    return t, strides


def stride_args(name: str, strides: tuple, axes: tuple = ("n", "c", "hw")) -> dict:
    """``strides`` by the kernels' parameter names, ``{name}_stride_{axis}`` for each of ``axes``
    (0 for each when ``strides`` is None: a tensor the kernel does not read)."""
    return {f"{name}_stride_{a}": s for a, s in zip(axes, strides or (0,) * len(axes))}


def dense(m: torch.Tensor | None) -> torch.Tensor | None:
    """A map as the kernels read it: its N·C or N·H·W elements in order, whatever its shape."""
    return None if m is None else m.contiguous()


def tl_dtype(dtype: torch.dtype):
    """The Triton dtype of a torch dtype."""
    return TL_DTYPES[dtype]


def tl_compute_dtype(dtype: torch.dtype):
    """:func:`bam_fused.common.compute_dtype` as a Triton dtype, for the kernels' COMPUTE constexpr."""
    return TL_DTYPES[compute_dtype(dtype)]


def memory_format(lay: GateLayout) -> torch.memory_format:
    """The memory format of a map laid out as ``lay``, for tensors that follow x's."""
    return torch.channels_last if lay.channels_last else torch.contiguous_format


def tile_shape(C: int, HW: int, channels_last: bool, tile_elems: int, max_fast: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): the fast axis gets up to ``max_fast`` lanes, the other axis the rest."""
    if channels_last:
        block_c = min(next_pow2(C), max_fast)
        block_hw = max(1, min(next_pow2(HW), tile_elems // block_c))
    else:
        block_hw = min(next_pow2(HW), max_fast)
        block_c = max(1, min(next_pow2(C), tile_elems // block_hw))
    return block_c, block_hw


# Triton's interpreter keeps the grid of the running launch (and its patches of triton.language)
# in module globals: two threads launching at once read each other's program ids. Reentrant, so
# a launcher may hold it across several launches.
_INTERPRETER_LOCK = threading.RLock()
# Per thread: the list captured_launches() records into, while it is active.
_capture = threading.local()


def launch_guard(kernel, device: torch.device):
    """The context every launch runs in, yielding what to launch:
    ``with launch_guard(kernel, x.device) as launch: launch[grid](...)``.

    For a kernel decorated as interpreted (``TRITON_INTERPRET=1`` when ``bam_fused.kernels`` was
    first imported), a process-wide lock: interpreted launches are serialised, so threads calling
    the gate at once get correct results. For a compiled kernel, ``device`` made the current CUDA
    device where it is not (Triton launches on the current device, not on its tensors': a model on
    cuda:1 without ``torch.cuda.set_device(1)`` would hand device 1's pointers to device 0), else a
    context that costs only the ``with`` (so does anything else that stands in for a kernel, such
    as the benchmarks' no-op stubs). Inside :func:`captured_launches` (this thread), a recorder.

    Raises RuntimeError when a compiled kernel is handed CPU tensors: only an interpreted kernel
    runs on them, and Triton decides which one a kernel is when it is decorated.
    """
    launches = getattr(_capture, "launches", None)
    if launches is not None:
        return contextlib.nullcontext(_Recorder(kernel, launches))
    if isinstance(kernel, InterpretedFunction):
        return _Serialised(kernel)
    if isinstance(kernel, JITFunction):
        _check_compiled_can_run(kernel, device)
        if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
            return _OnDevice(kernel, device.index)
    return _ready(kernel)


class CompiledForGPU(RuntimeError):
    """A compiled kernel handed CPU tensors: how the kernels were set up, not what a GPU can run."""


def _check_compiled_can_run(kernel: JITFunction, device: torch.device) -> None:
    if device.type == "cpu":
        raise CompiledForGPU(
            f"{kernel.__name__} was compiled for the GPU, not interpreted, so it cannot run on CPU tensors: "
            "TRITON_INTERPRET=1 must be set before bam_fused.kernels is first imported (set it in the "
            "environment, or call bam_fused.common.interpret_without_cuda() before importing the kernels "
            "or calling FusedBAM / bam_gate); setting it later has no effect on kernels already decorated"
        )


@functools.cache
def _ready(kernel) -> contextlib.nullcontext:
    return contextlib.nullcontext(kernel)


class _Serialised:
    """An interpreted launch under the process-wide lock."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __enter__(self):
        _INTERPRETER_LOCK.acquire()
        return self.kernel

    def __exit__(self, *exc):
        _INTERPRETER_LOCK.release()


class _OnDevice:
    """A compiled launch with ``index`` the current CUDA device."""

    __slots__ = ("kernel", "device")

    def __init__(self, kernel, index: int):
        self.kernel, self.device = kernel, torch.cuda.device(index)

    def __enter__(self):
        self.device.__enter__()
        return self.kernel

    def __exit__(self, *exc):
        return self.device.__exit__(*exc)


class _Recorder:
    """Stands in for a kernel inside captured_launches(): ``kernel[grid](*args, **kwargs)`` is recorded."""

    __slots__ = ("kernel", "launches")

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


@contextlib.contextmanager
def captured_launches():
    """Launches recorded, not run: ``[(kernel, args, kwargs), ...]`` of every launch in this thread
    inside the ``with``. The launchers can then run on meta tensors: what a real launch would
    compile (the PTX report, the kernels' pre-flight check), computing nothing."""
    launches = []
    outer = getattr(_capture, "launches", None)
    _capture.launches = launches
    try:
        yield launches
    finally:
        _capture.launches = outer


def load_launch(kernel, args: tuple, kwargs: dict, device: torch.device) -> None:
    """Compile and load a captured launch for ``device`` without running it: raises what its first
    real launch would (Triton's OutOfResources for shared memory or threads, a compile error, an
    arch it does not support); :class:`CompiledForGPU` for CPU tensors. Nothing to do for an
    interpreted kernel."""
    if isinstance(kernel, JITFunction):
        _check_compiled_can_run(kernel, device)
        with torch.cuda.device(device):
            kernel.warmup(*args, grid=(1,), **kwargs).run  # noqa: B018 (the property loads the binary)
