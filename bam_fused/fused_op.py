"""The whole module as the ``bam_fused::module`` / ``module_backward`` custom op pair, which
``torch.compile`` records (one node in its graph, the 8-pass kernels inside): fake
implementations, an autograd formula, and :func:`fused_bam_op`, the call FusedBAM's forward makes
while compiling. The ops compute what :mod:`bam_fused.fused_bam` computes, from the same
:class:`bam_fused.fused_call.FusedCall`, passed as plain values.
"""

import hashlib
import importlib.util
from pathlib import Path

import torch

from .fused_bam import Saved, buffer_views, differentiable_grads, module_backward, module_forward, no_autocast
from .fused_call import FusedCall, LayerSpec
from .kernels.layout import as_kernel_layout, captured_launches
from .kernels.utils import BatchNormMode

# The whole module as the custom op pair torch.compile traces: bam_fused::module (forward: y, the
# running statistics it updates, what the backward needs) and bam_fused::module_backward. An op
# with an autograd formula mutates none of its inputs, so the forward updates copies of the
# running statistics, which the caller copies back, and the caller counts the batches (as
# nn.BatchNorm does, before the cumulative averages read the counts). The ops take FusedCall's
# plain values as lists of ints, bools and floats.


def _implementation() -> str:
    """A digest of the code that computes the ops and lays out their outputs (this file, the
    forward and backward, the call's records, the kernels' launchers). Inductor's caches key a
    compiled graph by its ops' names and arguments, not by what the ops compute: with the digest
    among the arguments, a changed implementation is never handed a graph compiled for another
    one (whose outputs it would misread)."""
    here = Path(__file__).parent
    kernels = Path(importlib.util.find_spec("bam_fused.kernels").origin).parent
    digest = hashlib.sha256()
    for path in [here / "fused_op.py", here / "fused_bam.py", here / "fused_call.py", *sorted(kernels.glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_IMPLEMENTATION = _implementation()
_MODE_FLAGS = ("batch_stats", "update", "cumulative", "running", "counted")
_MODE_SCALARS = ("momentum", "eps")


def op_args(call: FusedCall) -> tuple:
    """(spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation): ``call``'s
    plain values as the ops take them, and :func:`_implementation`."""
    flags = [getattr(m, f) for m in call.bns for f in _MODE_FLAGS]
    scalars = [float(getattr(m, f)) for m in call.bns for f in _MODE_SCALARS]
    return call.spec.to_ints(), flags, scalars, call.combine, call.branch_dtype, call.autocast, _IMPLEMENTATION


def op_call(
    spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation, params=(), running=(), counts=()
):
    """The FusedCall of the ops' arguments (:func:`op_args`) and tensors."""
    nf, ns = len(_MODE_FLAGS), len(_MODE_SCALARS)
    bns = tuple(
        BatchNormMode(
            **dict(zip(_MODE_FLAGS, bn_flags[i * nf : (i + 1) * nf])),
            **dict(zip(_MODE_SCALARS, bn_scalars[i * ns : (i + 1) * ns])),
        )
        for i in range(len(bn_flags) // nf)
    )
    spec = LayerSpec.from_ints(spec)
    return FusedCall(spec, bns, combine, branch_dtype, autocast, tuple(params), tuple(running), tuple(counts), None)


def _updated(call: FusedCall) -> list[bool]:
    """Which of ``call.running`` the call updates."""
    return [m.update for m in call.bns if m.running for _ in "mv"]


def _forward_op_body(x, params, running, counts, values) -> list:
    call = op_call(*values, params, running, counts)
    updated = _updated(call)
    copies = [t.clone() if u else t for t, u in zip(running, updated)]
    with no_autocast(call, x.device.type):
        y, saved = module_forward(x, call._replace(running=tuple(copies)), keep=True)
    return [y, *(t for t, u in zip(copies, updated) if u), *saved.flat()]


def _backward_op_body(g, x, params, saved, values) -> list:
    call = op_call(*values, params)
    with no_autocast(call, x.device.type):
        gx, grad_buf, rest = module_backward(g, x, call, Saved.unflat(call, saved), call.params)
    return [gx, grad_buf, *rest]


def _static(t: torch.Tensor) -> torch.Tensor:
    """t, or a tensor like it with integer sizes and strides (symbolic ones specialised): what the
    fake implementations run the launchers on, whose plans are cached by shape."""
    if all(type(v) is int for v in (*t.shape, *t.stride())):
        return t
    return t.new_empty_strided([int(v) for v in t.shape], [int(v) for v in t.stride()])


# Both ops end with the call's plain values (op_args), written here once: each op's schema is
# spelled out, its function taking those values as one tuple.
_CALL_VALUES = (
    "int[] spec, bool[] bn_flags, float[] bn_scalars, str combine, ScalarType branch_dtype, bool autocast, "
    "str implementation"
)


@torch.library.custom_op(
    "bam_fused::module",
    mutates_args=(),
    schema=f"(Tensor x, Tensor[] params, Tensor[] running, Tensor[] counts, {_CALL_VALUES}) -> Tensor[]",
)
def _module_op(x, params, running, counts, *values) -> list[torch.Tensor]:
    """The module's forward on x (N, C, H, W) in a kernel layout (FusedCall's tensors and values,
    :func:`op_args`; ``counts`` already incremented): [y, the running statistics it updates, as
    new tensors, in ``running``'s order, what the backward needs]."""
    return _forward_op_body(x, params, running, counts, values)


@_module_op.register_fake
def _(x, params, running, counts, *values):
    tensors = (_static(x), *([_static(t) for t in ts] for ts in (params, running, counts)))
    with captured_launches():  # the launchers allocate their outputs; nothing is launched
        return _forward_op_body(*tensors, values)


@torch.library.custom_op(
    "bam_fused::module_backward",
    mutates_args=(),
    schema=f"(Tensor g, Tensor x, Tensor[] params, Tensor[] saved, {_CALL_VALUES}) -> Tensor[]",
)
def _module_backward_op(g, x, params, saved, *values) -> list[torch.Tensor]:
    """The module's first-order backward: [∂L/∂x, the buffer holding the first parameters'
    gradients, the other parameters' gradients] (:func:`module_backward`)."""
    return _backward_op_body(g, x, params, saved, values)


@_module_backward_op.register_fake
def _(g, x, params, saved, *values):
    tensors = (_static(g), _static(x), *([_static(t) for t in ts] for ts in (params, saved)))
    with captured_launches():
        return _backward_op_body(*tensors, values)


def _setup_context(ctx, inputs, output):
    x, params, running, counts, *values = inputs
    ctx.values = values
    ctx.params = len(params)
    ctx.buffers = len(running), len(counts)
    updated = sum(_updated(op_call(*values)))
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(x, *params, *output[1 + updated :])


def _module_op_backward(ctx, grads):
    x, *tensors = ctx.saved_tensors
    params, saved = tensors[: ctx.params], tensors[ctx.params :]
    call = op_call(*ctx.values, params)
    if torch.is_grad_enabled():  # create_graph: second order stays exact
        gx, *param_grads = differentiable_grads(grads[0], x, call, Saved.unflat(call, saved))
    else:
        gx, grad_buf, *rest = _module_backward_op(grads[0], x, params, saved, *ctx.values)
        param_grads = [*buffer_views(grad_buf, params[: len(params) - len(rest)]), *rest]
    running, counts = ([None] * n for n in ctx.buffers)
    return gx, list(param_grads), running, counts, *(None,) * len(ctx.values)


_module_op.register_autograd(_module_op_backward, setup_context=_setup_context)


def fused_bam_op(x: torch.Tensor, call: FusedCall) -> torch.Tensor:
    """:func:`fused_bam` through the ``bam_fused::module`` op (what torch.compile traces; the op
    costs more host time than the Function in eager calls)."""

    if call.error is not None:
        raise call.error
    if call.counts:  # as nn.BatchNorm counts its batches
        torch._foreach_add_(list(call.counts), 1)
    y, *rest = _module_op(as_kernel_layout(x), list(call.params), list(call.running), list(call.counts), *op_args(call))
    updated = [t for t, u in zip(call.running, _updated(call)) if u]
    if updated:
        torch._foreach_copy_(updated, rest[: len(updated)])
    return y
