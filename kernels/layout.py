"""How the launchers see a feature map: strides over (n, c, hw) and the tile shape to use.

The kernels address x[n, c, hw] as ``n * stride_n + c * stride_c + hw * stride_hw``; both
memory formats a CNN produces collapse (h, w) into one hw axis of a single stride:

    contiguous NCHW   (C·HW, HW, 1)  the fast axis is hw
    channels_last     (HW·C, 1, C)   the fast axis is c

Other layouts are copied once by the caller (see ``bam_fused.ops``).
"""

import functools
from dataclasses import dataclass

import torch
import triton.language as tl

# A forward program's tile holds this many bytes of x: two 16-byte accesses per thread of 4 warps.
# Small tiles, many programs: on an H200 this beat 8-32 KiB tiles at every ResNet-50 BAM shape
# (benchmarks/NOTES.md, tuning sweep 1).
TILE_BYTES = 4096


@dataclass(frozen=True)
class GateLayout:
    stride_n: int
    stride_c: int
    stride_hw: int
    channels_last: bool
    int64: bool


@functools.lru_cache(maxsize=1024)
def layout_of(shape: tuple, strides: tuple) -> GateLayout:
    """Strides of a 4-D x of ``shape`` (N, C, H, W) and ``strides`` as the kernels use them;
    cached, since the launch plans ask on every cache miss.

    Raises ValueError for a layout that is neither contiguous nor channels_last.
    """
    n, c, h, w = shape
    hw = h * w
    int64 = n * c * hw >= 2**31
    # torch's own contiguity rules (size-1 and empty dims), on a meta tensor: no data, no device.
    probe = torch.empty_strided(shape, strides, device="meta")
    if probe.is_contiguous():
        return GateLayout(c * hw, hw, 1, False, int64)
    if probe.is_contiguous(memory_format=torch.channels_last):
        return GateLayout(hw * c, 1, c, True, int64)
    raise ValueError(f"x must be contiguous or channels_last, got shape {tuple(shape)} with strides {tuple(strides)}")


def config_key(config: dict | None):
    """A hashable stand-in for a launch config (None: the heuristic's), for the plan caches."""
    return None if config is None else tuple(sorted(config.items()))


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉. Plain Python: triton.cdiv goes through Triton's constexpr machinery, ~10 µs a
    call on the host, and a backward took a dozen of them."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of 2 ≥ n (1 for n ≤ 1); plain Python for the reason of :func:`cdiv`."""
    return 1 << max(0, n - 1).bit_length()


def tile_shape(C: int, HW: int, channels_last: bool, tile_elems: int, max_fast: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): the fast axis gets up to ``max_fast`` lanes, the other axis the rest."""
    if channels_last:
        block_c = min(next_pow2(C), max_fast)
        block_hw = max(1, min(next_pow2(HW), tile_elems // block_c))
    else:
        block_hw = min(next_pow2(HW), max_fast)
        block_c = max(1, min(next_pow2(C), tile_elems // block_hw))
    return block_c, block_hw


def compute_dtype(dtype: torch.dtype):
    """The kernels' compute dtype for x of ``dtype``: float64 stays float64 (gradcheck), else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def multiprocessor_count(device: torch.device) -> int:
    """SMs of a CUDA device; 1 elsewhere (the interpreter runs one program at a time)."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 1


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
