"""The BAM gate in plain PyTorch: the specification the Triton kernels are tested against.

    y = x · (1 + σ(mc ⊕ ms))      (x · σ(mc ⊕ ms) with residual=False)

Shapes (already checked by :func:`bam_fused.bam_gate`): x (N, C, H, W); mc (N, C) or None;
ms (N, H, W) or None, not both None. Math in float32 (float64 when x is float64), output in
x's dtype. Differentiable through autograd; this is also the path CPU users get.
"""

import torch

from .common import COMBINES, compute_dtype


def gate_preactivation(mc, ms, combine: str) -> torch.Tensor:
    """a = mc ⊕ ms, broadcast to (N, C, H, W) only when both maps are given.

    Returns (N, C, 1, 1), (N, 1, H, W) or (N, C, H, W) in the maps' promoted dtype.
    """
    mc4 = mc[:, :, None, None] if mc is not None else None
    ms4 = ms[:, None] if ms is not None else None
    if ms4 is None:
        return mc4
    if mc4 is None:
        return ms4
    if combine == "sum":
        return mc4 + ms4
    if combine == "product":
        return mc4 * ms4
    if combine == "max":
        return torch.maximum(mc4, ms4)
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def bam_gate(x, mc=None, ms=None, combine: str = "sum", residual: bool = True) -> torch.Tensor:
    """The gate with one full-size temporary (σ) beyond the compute-dtype copy of a half x.

    Shapes: x (N, C, H, W); mc (N, C); ms (N, H, W). Returns (N, C, H, W) in x's dtype and
    memory format.
    """
    dt = compute_dtype(x.dtype)
    a = gate_preactivation(mc.to(dt) if mc is not None else None, ms.to(dt) if ms is not None else None, combine)
    s = torch.sigmoid(a)
    xd = x.to(dt)
    # x + x·σ in one op rather than x · (1 + σ): no second full-size temporary, none saved for
    # backward beyond σ (which sigmoid saves anyway), and the same ops whether or not autograd
    # records them, so torch.jit.trace sees one graph in training and in eval.
    y = torch.addcmul(xd, xd, s) if residual else xd * s
    return y.to(dtype=x.dtype, memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def released_code_gate(x, mc=None, ms=None, combine: str = "product", residual: bool = True) -> torch.Tensor:
    """The gate as eager code usually writes it, the released code's way: expand both maps to
    x's shape, combine, sigmoid, add 1, multiply — each step a full-size pass in x's dtype.

    The baseline that the benchmarks and ``python -m bam_fused`` compare against. Shapes as
    :func:`bam_gate`.
    """
    # Broadcasting the maps is the same TensorIterator pass as expand_as: one full-size tensor.
    a = gate_preactivation(
        mc.to(x.dtype) if mc is not None else None, ms.to(x.dtype) if ms is not None else None, combine
    )
    att = torch.sigmoid(a)
    return (1 + att) * x if residual else att * x
