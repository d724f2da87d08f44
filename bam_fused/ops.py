"""``bam_gate``: the public gate, its input checks, and the autograd bindings of the Triton kernels.

The forward (:func:`bam_fused.kernels.gate_fwd`) and backward (:func:`bam_fused.kernels.gate_bwd`)
are bound under autograd twice: as the ``bam_fused::gate`` custom op, with fake implementations
so that ``torch.compile(fullgraph=True)`` traces through it, and as an ``autograd.Function``
for eager calls, where the custom-op dispatch would cost more host time than the kernels take
at small maps. Either saves only x, mc and ms for backward.
"""

import torch
from torch import Tensor

from . import reference
from .common import BACKENDS, COMBINES, FLOAT_DTYPES, interpreter_requested
from .kernels.gate_bwd import gate_bwd
from .kernels.gate_fwd import gate_fwd
from .kernels.layout import as_kernel_layout
from .preflight import backward_both_ways, kernels_unavailable, meta_like


def triton_can_run(x: Tensor) -> bool:
    """Whether the Triton kernels can run on x's device (CUDA, or CPU under the interpreter)."""
    return x.device.type == "cuda" or (x.device.type == "cpu" and interpreter_requested())


def _gate_forward(x, mc, ms, combine, residual):
    return gate_fwd(x, mc, ms, combine=combine, residual=residual)


def _gate_backward(g, x, mc, ms, combine, residual):
    return gate_bwd(g, x, mc, ms, combine=combine, residual=residual)


@torch.library.custom_op("bam_fused::gate", mutates_args=())
def _gate_op(x: Tensor, mc: Tensor | None, ms: Tensor | None, combine: str, residual: bool) -> Tensor:
    """The fused forward as a custom op (what ``torch.compile`` sees). Shapes as :func:`bam_gate`."""
    return _gate_forward(x, mc, ms, combine, residual)


@_gate_op.register_fake
def _(x, mc, ms, combine, residual):
    return torch.empty_like(as_kernel_layout(x))


@torch.library.custom_op("bam_fused::gate_backward", mutates_args=())
def _gate_backward_op(
    g: Tensor, x: Tensor, mc: Tensor | None, ms: Tensor | None, combine: str, residual: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused backward as a custom op: (gx, gmc, gms); an empty tensor stands for a None map."""
    gx, gmc, gms = _gate_backward(g, x, mc, ms, combine, residual)
    empty = x.new_empty(0)
    return gx, (gmc if gmc is not None else empty), (gms if gms is not None else empty)


@_gate_backward_op.register_fake
def _(g, x, mc, ms, combine, residual):
    empty = x.new_empty(0)
    return (
        torch.empty_like(as_kernel_layout(x)),
        empty if mc is None else torch.empty_like(mc, memory_format=torch.contiguous_format),
        empty if ms is None else torch.empty_like(ms, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    x, mc, ms, combine, residual = inputs
    ctx.save_for_backward(x, mc, ms)
    ctx.combine = combine
    ctx.residual = residual


def _reference_maps(x: Tensor, mc: Tensor | None, ms: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """mc as (N, C) and ms as (N, H, W), the shapes :mod:`bam_fused.reference` takes."""
    N, C, H, W = x.shape
    return (mc.reshape(N, C) if mc is not None else None), (ms.reshape(N, H, W) if ms is not None else None)


def _differentiable_grads(grad, x, mc, ms, combine, residual):
    """(gx, gmc, gms) as a graph autograd can differentiate again: the reference re-run on the
    saved inputs and differentiated with ``create_graph``. The kernels' gradients are constants
    to autograd, so a backward that runs with grad enabled (``create_graph=True``: gradient
    penalties, double backward, meta-learning) takes this route instead. Shapes as :func:`bam_gate`;
    None for a map that is None or does not require grad."""
    # The maps as the reference takes them, as fresh views: each is differentiated by itself.
    mc_ref, ms_ref = _reference_maps(x, mc, ms)
    y = reference.bam_gate(x, mc_ref, ms_ref, combine, residual)
    inputs = (x, mc_ref, ms_ref)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=True))
    gx, gmc, gms = (next(grads) if t is not None and t.requires_grad else None for t in inputs)
    return (
        gx,
        (gmc.reshape(mc.shape) if gmc is not None else None),
        (gms.reshape(ms.shape) if gms is not None else None),
    )


def _custom_op_grads(grad, x, mc, ms, combine, residual):
    """The kernels' gradients through the ``bam_fused::gate_backward`` op, None for an absent map."""
    gx, gmc, gms = _gate_backward_op(grad, x, mc, ms, combine, residual)
    return gx, (gmc if mc is not None else None), (gms if ms is not None else None)


def _backward_with(kernel_grads):
    """The backward of either binding: ``kernel_grads`` for first-order gradients, the
    differentiable formulation when autograd builds a graph of the backward (``create_graph``)."""

    def backward(ctx, grad):
        x, mc, ms = ctx.saved_tensors
        grads_of = _differentiable_grads if torch.is_grad_enabled() else kernel_grads
        gx, gmc, gms = grads_of(grad, x, mc, ms, ctx.combine, ctx.residual)
        return gx, gmc, gms, None, None

    return backward


_gate_op.register_autograd(_backward_with(_custom_op_grads), setup_context=_setup_context)


class _GateFunction(torch.autograd.Function):
    """Eager path: the same kernels as ``_gate_op`` without the custom-op dispatch. With a stub
    body a forward cost 144 µs of host time through the op and 22 µs through this Function on
    the CPU machine; on the GPU the op's cost showed at every map below 56² (benchmarks/NOTES.md)."""

    @staticmethod
    def forward(ctx, x, mc, ms, combine, residual):
        _setup_context(ctx, (x, mc, ms, combine, residual), None)
        return _gate_forward(x, mc, ms, combine, residual)

    backward = staticmethod(_backward_with(_gate_backward))


def transformed() -> bool:
    """Whether a torch.func transform (vmap, grad, jvp, …) or a forward-mode AD level is active:
    its tensors are wrappers or carry tangents, which the kernels cannot read."""
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


def _check_map(name: str, m, want: tuple, alt: tuple, x: Tensor) -> Tensor | None:
    """mc/ms: None or a floating tensor of shape ``want`` (or ``alt``), on x's device; returned
    as given (the kernels flatten it themselves, so autograd records no reshape)."""
    if m is None:
        return None
    if not isinstance(m, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(m).__name__}")
    if not m.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {m.dtype}")
    if tuple(m.shape) not in (want, alt):
        raise ValueError(
            f"{name} must have shape {want} or {alt} for x of shape {tuple(x.shape)}, got {tuple(m.shape)}"
        )
    if m.device != x.device:
        raise ValueError(f"{name} is on {m.device} but x is on {x.device}")
    return m


def _gate_unavailable(x, mc, ms, combine: str, residual: bool, backend: str) -> str | None:
    """Why the gate kernels cannot run for this configuration on x's device (found once per
    configuration, before anything runs: :mod:`bam_fused.preflight`), or None. Under
    ``backend="triton"`` a RuntimeError instead."""
    key = (x.device, x.shape, x.stride(), x.dtype, _dtype(mc), _dtype(ms), combine, residual)
    fallback = None if backend == "triton" else "bam_gate runs the reference gate"
    return kernels_unavailable(key, lambda: _gate_step_on_meta(x, mc, ms, combine, residual), x, fallback)


def _dtype(m: Tensor | None):
    return None if m is None else m.dtype


def _gate_step_on_meta(x, mc, ms, combine: str, residual: bool) -> None:
    """The gate's forward and backward on meta tensors shaped like the call's: its launches."""
    leaves = [meta_like(t, requires_grad=True) for t in (x, mc, ms)]
    backward_both_ways(_GateFunction.apply(*leaves, combine, residual))


def bam_gate(x, mc=None, ms=None, *, combine: str = "sum", residual: bool = True, backend: str = "auto"):
    """The BAM gate ``y = x · (1 + σ(mc ⊕ ms))``, or ``x · σ(mc ⊕ ms)`` with ``residual=False``.

    Args:
        x: (N, C, H, W), float16/bfloat16/float32/float64; contiguous or channels_last run
            without a copy. The output has x's dtype and memory format; math is float32.
        mc: channel map (N, C) or (N, C, 1, 1), floating, or None (spatial-only).
        ms: spatial map (N, H, W) or (N, 1, H, W), floating, or None (channel-only).
        combine: "sum" (paper), "product" (released code) or "max" (as ``torch.maximum``).
        residual: add the identity (``1 +``) as BAM does.
        backend: "auto" (Triton on CUDA, and on CPU under TRITON_INTERPRET=1; else the
            reference), "triton" (error where the kernels cannot run), "reference".

    Returns:
        (N, C, H, W) tensor, differentiable in x, mc and ms.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    N, C, H, W = x.shape
    mc = _check_map("mc", mc, (N, C), (N, C, 1, 1), x)
    ms = _check_map("ms", ms, (N, H, W), (N, 1, H, W), x)
    if mc is None and ms is None:
        raise ValueError("mc and ms are both None: at least one attention map is needed")

    if backend == "triton" and not triton_can_run(x):
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"bam_fused.kernels is first imported); x is on {x.device}"
        )
    if backend == "triton" or (backend == "auto" and triton_can_run(x)):
        # torch.compile and torch.jit.trace record the custom op (the traced graph calls the kernels).
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return _gate_op(x, mc, ms, combine, bool(residual))
        if not transformed():
            if _gate_unavailable(x, mc, ms, combine, bool(residual), backend):
                return reference.bam_gate(x, *_reference_maps(x, mc, ms), combine, bool(residual))
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, mc, ms)):
                return _GateFunction.apply(x, mc, ms, combine, bool(residual))
            return _gate_forward(x, mc, ms, combine, bool(residual))  # inference: no autograd node to build
        if backend == "triton":
            raise RuntimeError(
                "backend='triton' cannot run under torch.func transforms (vmap, grad, jvp, …) or forward-mode AD "
                "(torch.autograd.forward_ad): the kernels read plain tensors, not their wrappers or tangents. "
                "Use backend='auto' (it runs the reference there) or backend='reference'"
            )
    return reference.bam_gate(x, *_reference_maps(x, mc, ms), combine, bool(residual))
