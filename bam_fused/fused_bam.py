"""The whole BAM module as one autograd node: both branches, the gate and the BatchNorm updates.

    forward   pool_reduce (Triton)      one read of x → the pooled means' partials and z0 = Wr·x + br
              channel_mlp_fwd (Triton)  p → u1 → BN1 → ReLU → u2 → [BNc] → mc         (one program)
              the spatial branch        BN_r, ReLU, the dilated 3×3 convolutions, the final 1×1: aten calls
              gate_fwd (Triton)         y = x · (1 + σ(mc ⊕ ms))
    backward  stage one (Triton)        g, x → the map gradients' partials (gx not written)
              stage two (Triton)        gmc, gms in a fixed order
              the spatial branch        its aten backward calls, down to ∂L/∂z0
              channel_mlp_bwd (Triton)  gmc → every channel-branch gradient and ∂L/∂p  (one program)
              input_grad (Triton)       g, x, ∂L/∂z0, ∂L/∂p → gx, once; ∂L/∂Wr, ∂L/∂br

Eight passes over tensors of x's size; nothing of x's size is saved but x.

The forward and backward take a :class:`bam_fused.fused_call.FusedCall` (the call without the
module), so that they serve two bindings: the ``autograd.Function`` here for eager calls
(:func:`fused_bam`), and the ``bam_fused::module`` / ``module_backward`` custom ops that
``torch.compile`` records (:mod:`bam_fused.fused_op`). Which calls take this path, and the
FusedCall for each, is decided by :mod:`bam_fused.fused_path`.

A BatchNorm with ``momentum=None`` (the cumulative average) updates its running statistics by
the factor 1 / num_batches_tracked computed on the device, not read on the host: the call makes
no host synchronisation, so a CUDA graph can capture it and torch.compile trace it.
"""

import contextlib
import itertools
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import reference
from .common import compute_dtype
from .fused_call import IN_BUFFER, FusedCall, batch_norms, unflatten
from .kernels.channel_mlp import channel_mlp_bwd, channel_mlp_fwd
from .kernels.gate_bwd import bwd_plan, launch_gate_bwd_stage_one, launch_gate_bwd_stage_two
from .kernels.gate_fwd import gate_fwd
from .kernels.input_grad import input_grad, input_grad_plan
from .kernels.layout import as_kernel_layout
from .kernels.pool_reduce import pool_reduce
from .kernels.utils import BatchNorm
from .preflight import backward_both_ways, meta_like

_BATCH_STATS = operator.attrgetter("batch_stats")


def _batch_update(bn: BatchNorm | None) -> BatchNorm | None:
    """``bn`` as its kernel or aten call runs: a cumulative average has it write the batch's mean
    and unbiased variance into zeros (momentum 1), for :func:`_cumulative_update` to apply."""
    if bn is None or not bn.mode.cumulative:
        return bn
    zeros = torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)
    return bn._replace(mode=bn.mode._replace(momentum=1.0), running_mean=zeros[0], running_var=zeros[1])


def _cumulative_update(bn: BatchNorm | None, batch: BatchNorm | None) -> None:
    """For a cumulative average (``batch``: :func:`_batch_update`'s), running ← running + (batch −
    running) / num_batches_tracked (this batch counted), as ``nn.BatchNorm`` with momentum=None,
    the factor computed on the device in float64."""
    if bn is None or not bn.mode.cumulative:
        return
    factor = bn.count.to(torch.float64).reciprocal().to(bn.running_mean.dtype)
    bn.running_mean.lerp_(batch.running_mean, factor)
    bn.running_var.lerp_(batch.running_var, factor)


class _SavedBN(NamedTuple):
    """What one spatial BatchNorm's backward needs besides its mode and weight."""

    input: torch.Tensor
    mean: torch.Tensor | None  # the batch's (None in eval mode: the running ones are used)
    invstd: torch.Tensor | None


def _batch_norm(t, bn: BatchNorm):
    """One spatial BatchNorm on t, as nn.BatchNorm runs it this call: ``(out, _SavedBN)``."""
    b = _batch_update(bn) if bn.mode.cumulative else bn
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        t, b.weight, b.bias, b.running_mean, b.running_var, b.mode.batch_stats, b.mode.momentum, b.mode.eps
    )
    if bn.mode.cumulative:
        _cumulative_update(bn, b)
    return out, _SavedBN(t, *((mean, invstd) if bn.mode.batch_stats else (None, None)))


def _batch_norm_backward(g, bn: BatchNorm, saved: _SavedBN):
    """(∂L/∂input, ∂L/∂weight, ∂L/∂bias) of one BatchNorm (its running statistics, in eval mode,
    as the forward read them: :func:`unflatten`'s ``frozen``)."""
    return torch.ops.aten.native_batch_norm_backward(
        g,
        saved.input,
        bn.weight,
        bn.running_mean,
        bn.running_var,
        saved.mean,
        saved.invstd,
        bn.mode.batch_stats,
        bn.mode.eps,
        [True] * 3,
    )


def _cast(w, dtype):
    """w in ``dtype``: a parameter as autocast hands it to a convolution, or its gradient back."""
    return w if w.dtype == dtype else w.to(dtype)


# The 1×1 convolutions' padding and dilation (the final one's: the reduce runs in pool_reduce).
_ONE_BY_ONE = ([0, 0], [1, 1])


def _conv(a, weight_bias, dtype, padding_dilation=_ONE_BY_ONE):
    """A stride-1, one-group convolution on a, its parameters in the branch's dtype;
    ``padding_dilation``: two [h, w] lists."""
    w, bias = (_cast(t, dtype) for t in weight_bias)
    return torch.ops.aten.convolution(a, w, bias, [1, 1], *padding_dilation, False, [0, 0], 1)


def _conv_backward(g, a, params, dtype, padding_dilation=_ONE_BY_ONE):
    """(∂L/∂a, (∂L/∂weight, ∂L/∂bias) in the parameters' dtypes) of :func:`_conv`."""
    w = _cast(params[0], dtype)
    g_a, g_w, g_b = torch.ops.aten.convolution_backward(
        g, a, w, [w.shape[0]], [1, 1], *padding_dilation, False, [0, 0], 1, [True] * 3
    )
    return g_a, tuple(_cast(t, p.dtype) for t, p in zip((g_w, g_b), params))


class Saved(NamedTuple):
    """What the backward needs besides x and the parameters (all small): maps, the channel
    branch's and the spatial one's, and the running statistics eval-mode BatchNorms normalised with."""

    mlp: torch.Tensor | None  # channel_mlp_fwd's buffer: mc (N, C) in its first N·C values, then what it saves
    p: torch.Tensor | None  # (N, C) the pooled means, compute dtype
    bn_r: _SavedBN | None
    a_r: torch.Tensor | None  # ReLU(BN_r(z0))
    dilated: tuple  # (_SavedBN, ReLU output) per dilated convolution
    ms: torch.Tensor | None  # (N, 1, H, W)
    bn_s: _SavedBN | None
    frozen: tuple  # copies of (running_mean, running_var) of each BatchNorm not on batch statistics, flattened

    def flat(self) -> list:
        """The tensors in a fixed order, None left out (:meth:`unflat` reads it back)."""
        dilated = itertools.chain.from_iterable((*bn, a) for bn, a in self.dilated)
        out = (self.mlp, self.p, *(self.bn_r or ()), self.a_r, *dilated, self.ms, *(self.bn_s or ()), *self.frozen)
        return [t for t in out if t is not None]

    @staticmethod
    def unflat(call: FusedCall, tensors) -> "Saved":
        """The inverse of :meth:`flat` for a call of ``call``'s layers and modes."""
        it = iter(tensors)
        spec = call.spec
        spatial_modes = iter(call.bns[len(call.bns) - (1 + len(spec.dilated) + spec.spatial_bn) :])

        def saved_bn():
            batch_stats = next(spatial_modes).batch_stats
            return _SavedBN(next(it), *((next(it), next(it)) if batch_stats else (None, None)))

        mlp, p = (next(it), next(it)) if spec.mlp_hidden else (None, None)
        bn_r = a_r = ms = bn_s = None
        dilated = ()
        if spec.hidden:
            bn_r, a_r = saved_bn(), next(it)
            dilated = tuple((saved_bn(), next(it)) for _ in spec.dilated)
            ms = next(it)
            bn_s = saved_bn() if spec.spatial_bn else None
        return Saved(mlp, p, bn_r, a_r, dilated, ms, bn_s, tuple(it))


def module_forward(x: torch.Tensor, call: FusedCall, keep: bool):
    """``(y, Saved or None)``: the module on x (N, C, H, W) in a kernel layout, autocast off;
    num_batches_tracked already counted."""

    parts, dt = unflatten(call), call.branch_dtype
    pool_part, z0 = pool_reduce(x, *(parts.reduce or (None, None)), pool=parts.fc0 is not None, dot_dtype=dt)
    ms = p = mlp = bn_r = a_r = bn_s = None
    dilated = ()
    if parts.fc0 is not None:
        p = pool_part.sum(1)
        bn1, bnc = _batch_update(parts.bn1), _batch_update(parts.bn_c)
        mlp = channel_mlp_fwd(p, *parts.fc0, bn1, *parts.fc_final, bnc, dt)
        _cumulative_update(parts.bn1, bn1)
        _cumulative_update(parts.bn_c, bnc)
    if parts.reduce is not None:
        out, bn_r = _batch_norm(z0, parts.bn_r)
        a = a_r = torch.relu_(out)
        for conv, bn, padding_dilation in parts.dilated:
            out, saved_bn = _batch_norm(_conv(a, conv, dt, padding_dilation), bn)
            a = torch.relu_(out)
            dilated += ((saved_bn, a),)
        ms = _conv(a, parts.conv_final, dt)
        if parts.bn_s is not None:
            ms, bn_s = _batch_norm(ms, parts.bn_s)
    y = gate_fwd(x, mlp, ms, combine=call.combine, residual=True)  # mc: mlp's first N·C values
    if not keep:
        return y, None
    frozen = ()
    if not all(map(_BATCH_STATS, call.bns)):
        eval_mode = (bn for bn in batch_norms(parts) if not bn.mode.batch_stats)
        frozen = tuple(t.clone() for bn in eval_mode for t in (bn.running_mean, bn.running_var))
    return y, Saved(mlp, p, bn_r, a_r, dilated, ms, bn_s, frozen)


def module_backward(g: torch.Tensor, x: torch.Tensor, call: FusedCall, saved: Saved, params: tuple) -> tuple:
    """``(∂L/∂x, grad_buf, rest)``, first order, by the kernels and aten's backward calls; autocast
    off. ``rest`` holds the gradients of the last ``len(rest)`` parameters, ``grad_buf`` those of
    the others (the layers before :data:`IN_BUFFER`), one after another (:func:`buffer_views`).
    ``call`` needs no running statistics or counts; ``params`` stand for its parameters."""

    parts, dt = unflatten(call, saved.frozen, params), call.branch_dtype
    N, C, H, W = x.shape
    plan = bwd_plan(x)
    # Stage one's partials, and then (once stage two has read them) input_grad's, in one buffer.
    h = call.spec.hidden
    ig_plan = input_grad_plan(x.shape, x.stride(), x.dtype, x.device, h, dt)
    partials = torch.empty(
        max(plan.parts_numel, ig_plan.part_numel if h else 0), device=x.device, dtype=compute_dtype(x.dtype)
    )
    launch_gate_bwd_stage_one(g, x, saved.mlp, saved.ms, None, partials, plan, combine=call.combine, residual=True)
    gmc = torch.empty((N, C), device=x.device, dtype=dt) if saved.mlp is not None else None
    gms = torch.empty_like(saved.ms) if saved.ms is not None else None
    launch_gate_bwd_stage_two(partials, gmc, gms, plan)

    buffered = [t for layer in parts[:IN_BUFFER] if layer is not None for t in layer[:2]]
    sizes = [t.numel() for t in buffered]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    grad_buf = torch.empty(sum(sizes), device=x.device, dtype=buffered[0].dtype)

    g_z0 = None
    rest = []  # the other layers' (∂L/∂bias, ∂L/∂weight) as the backward meets them, last layer first
    if parts.reduce is not None:
        g_t = gms
        if parts.bn_s is not None:
            g_t, g_w, g_b = _batch_norm_backward(g_t, parts.bn_s, saved.bn_s)
            rest += (g_b, g_w)
        a = saved.dilated[-1][1] if saved.dilated else saved.a_r
        g_a, (g_w, g_b) = _conv_backward(g_t, a, parts.conv_final, dt)
        rest += (g_b, g_w)
        for i in reversed(range(len(parts.dilated))):
            (conv, bn, padding_dilation), (saved_bn, a) = parts.dilated[i], saved.dilated[i]
            g_c, g_w, g_b = _batch_norm_backward(torch.ops.aten.threshold_backward(g_a, a, 0), bn, saved_bn)
            rest += (g_b, g_w)
            a_in = saved.dilated[i - 1][1] if i else saved.a_r
            g_a, (g_w, g_b) = _conv_backward(g_c, a_in, conv, dt, padding_dilation)
            rest += (g_b, g_w)
        g_r = torch.ops.aten.threshold_backward(g_a, saved.a_r, 0)
        g_z0, g_w, g_b = _batch_norm_backward(g_r, parts.bn_r, saved.bn_r)
        rest += (g_b, g_w)

    if parts.fc0 is not None:  # ∂L/∂p lands over gmc
        mlp_offsets = offsets[: len(offsets) - 2] if parts.reduce is not None else offsets
        channel_mlp_bwd(
            gmc, saved.p, saved.mlp, parts.fc0[0], parts.bn1, parts.fc_final[0], parts.bn_c, grad_buf, mlp_offsets
        )
    has_reduce = parts.reduce is not None
    gx = input_grad(
        g,
        x,
        saved.mlp,
        saved.ms,
        gmc,
        g_z0,
        parts.reduce[0] if has_reduce else None,
        combine=call.combine,
        residual=True,
        grads=grad_buf,
        grad_offsets=tuple(offsets[-2:]) if has_reduce else (0, 0),
        part=partials,
    )
    rest.reverse()  # (run order, weight before bias)
    return gx, grad_buf, rest


def buffer_views(grad_buf: torch.Tensor, params) -> tuple:
    """One view of ``grad_buf`` per tensor of ``params``, in order, shaped like it: the gradients
    :func:`module_backward` wrote there (autograd takes views of one buffer as they are)."""
    sizes = [p.numel() for p in params]
    return tuple(t if p.dim() == 1 else t.view(p.shape) for t, p in zip(grad_buf.split_with_sizes(sizes), params))


def _functional(x: torch.Tensor, call: FusedCall, saved: Saved) -> torch.Tensor:
    """The module in differentiable PyTorch ops on the forward's statistics (the batch's, or the
    running ones as they were), updating nothing: what a create_graph backward differentiates."""
    parts = unflatten(call, frozen=saved.frozen)

    def bn(t, b: BatchNorm):
        return F.batch_norm(t, b.running_mean, b.running_var, b.weight, b.bias, b.mode.batch_stats, 0.0, b.mode.eps)

    mc = ms = None
    if parts.fc0 is not None:
        mc = F.linear(F.relu(bn(F.linear(x.mean((2, 3)), *parts.fc0), parts.bn1)), *parts.fc_final)
        if parts.bn_c is not None:
            mc = bn(mc, parts.bn_c)
    if parts.reduce is not None:
        a = F.relu(bn(F.conv2d(x, *parts.reduce), parts.bn_r))
        for conv, b, (padding, dilation) in parts.dilated:
            a = F.relu(bn(F.conv2d(a, *conv, padding=padding, dilation=dilation), b))
        ms = F.conv2d(a, *parts.conv_final)
        if parts.bn_s is not None:
            ms = bn(ms, parts.bn_s)
    N, C, H, W = x.shape
    return reference.bam_gate(x, mc, ms.reshape(N, H, W) if ms is not None else None, call.combine, True)


def differentiable_grads(g, x, call: FusedCall, saved: Saved) -> tuple:
    """(∂L/∂x, then each parameter's gradient; None where it needs none) as a graph autograd can
    differentiate again: the module recomputed in PyTorch ops (:func:`_functional`), under the
    call's autocast. What a backward running with grad enabled (``create_graph=True``: gradient
    penalties, double backward) returns instead of the kernels' gradients, which autograd cannot
    differentiate."""
    with torch.autocast(x.device.type, dtype=call.branch_dtype, enabled=call.autocast):
        y = _functional(x, call, saved)
    inputs = [t for t in (x, *call.params) if t.requires_grad]
    got = iter(torch.autograd.grad(y, inputs, g, create_graph=True, allow_unused=True))
    return tuple(next(got) if t.requires_grad else None for t in (x, *call.params))


def no_autocast(call: FusedCall, device_type: str):
    """Autocast off where the call's branches run under it (their dtypes are explicit here)."""
    return torch.autocast(device_type, enabled=False) if call.autocast else contextlib.nullcontext()


class _FusedBAMFunction(torch.autograd.Function):
    """The whole module, one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, call: FusedCall, *params):
        y, saved = module_forward(x, call, keep=True)
        ctx.call = call
        ctx.branch_tensors = saved
        ctx.save_for_backward(x, *params)
        return y

    @staticmethod
    def backward(ctx, g):
        x, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: second order stays exact
            gx, *grads = differentiable_grads(g, x, ctx.call._replace(params=params), ctx.branch_tensors)
            return gx, None, *grads
        gx, grad_buf, rest = module_backward(g, x, ctx.call, ctx.branch_tensors, params)
        return gx, None, *buffer_views(grad_buf, params[: len(params) - len(rest)]), *rest


def fused_bam(x: torch.Tensor, call: FusedCall) -> torch.Tensor:
    """The module ``call`` was planned for (:func:`bam_fused.fused_path.check_fused_path`) on x
    (N, C, H, W), as one autograd node: (N, C, H, W) in x's dtype and memory format. Raises
    ``call.error`` (what eager BAM raises) before anything changes."""

    if call.error is not None:
        raise call.error
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in call.params))
    if call.counts:  # as nn.BatchNorm counts its batches; one foreach call for all
        torch._foreach_add_(call.counts, 1)
    x = as_kernel_layout(x)
    with no_autocast(call, x.device.type):
        if keep:
            return _FusedBAMFunction.apply(x, call, *call.params)
        return module_forward(x, call, keep=False)[0]


def meta_call(call: FusedCall) -> FusedCall:
    """``call`` on meta tensors of its tensors' shapes, strides and dtypes, autocast off (its
    dtypes are explicit)."""
    params = tuple(meta_like(p, p.requires_grad) for p in call.params)
    running, counts = (tuple(map(meta_like, ts)) for ts in (call.running, call.counts))
    return call._replace(params=params, running=running, counts=counts, autocast=False)


def step_on_meta(x: torch.Tensor, call: FusedCall) -> None:
    """A training step of ``call`` on meta tensors shaped like x and the call's: the kernels a real
    step launches, with nothing computed (``bam_fused.preflight``)."""
    backward_both_ways(fused_bam(meta_like(x, requires_grad=True), meta_call(call)))
