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

Eight passes over tensors of x's size; nothing of x's size is saved but x. What this path
computes, and when ``FusedBAM`` runs the per-op path instead, is decided by
:mod:`bam_fused.fused_path`, whose :class:`~bam_fused.fused_path.FusedCall` every function here
takes: the layers, their parameters and each BatchNorm's mode for this call.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NamedTuple

import torch

from .preflight import backward_both_ways, meta_like

if TYPE_CHECKING:  # (fused_path imports this file: it checks what these functions launch)
    from .fused_path import BatchNormCall, FusedCall, Structure


def _by_layer(s: Structure, params) -> dict:
    """layer → (weight, bias), from ``params`` in :attr:`Structure.layers` order."""
    it = iter(params)
    return dict(zip(s.layers, zip(it, it)))


def _bn_args(call: BatchNormCall, weight_bias):
    from .kernels.channel_mlp import BatchNormArgs

    weight, bias = weight_bias
    return BatchNormArgs(
        weight, bias, call.running_mean, call.running_var, call.eps, call.momentum, call.batch_stats, call.update
    )


class _SavedBN(NamedTuple):
    """What one BatchNorm's backward needs beside its call."""

    input: torch.Tensor
    mean: torch.Tensor  # the batch's (empty in eval mode)
    invstd: torch.Tensor


def _batch_norm(t, call: BatchNormCall, weight_bias):
    """One BatchNorm on t, as nn.BatchNorm runs it this call: ``(out, _SavedBN)``."""
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        t, *weight_bias, call.running_mean, call.running_var, call.batch_stats, call.momentum, call.eps
    )
    return out, _SavedBN(t, mean, invstd)


def _batch_norm_backward(g, call: BatchNormCall, weight, saved: _SavedBN):
    """(∂L/∂input, ∂L/∂weight, ∂L/∂bias) of one BatchNorm."""
    return torch.ops.aten.native_batch_norm_backward(
        g,
        saved.input,
        weight,
        call.running_mean,
        call.running_var,
        saved.mean,
        saved.invstd,
        call.batch_stats,
        call.eps,
        [True] * 3,
    )


def _cast(w, dtype):
    """w in ``dtype``: a parameter as autocast hands it to a convolution, or its gradient back."""
    return w if w.dtype == dtype else w.to(dtype)


# The 1×1 convolutions' padding and dilation (the final one's: the reduce runs in pool_reduce).
_ONE_BY_ONE = ([0, 0], [1, 1])


def _conv(a, weight_bias, dtype, padding_dilation=_ONE_BY_ONE):
    """``(out, weight as used)``: a stride-1, one-group convolution on a, its parameters in the
    branch's dtype; ``padding_dilation``: two [h, w] lists."""
    w, bias = (_cast(t, dtype) for t in weight_bias)
    out = torch.ops.aten.convolution(a, w, bias, [1, 1], *padding_dilation, False, [0, 0], 1)
    return out, w


def _conv_backward(g, a, w, params, padding_dilation=_ONE_BY_ONE):
    """(∂L/∂a, (∂L/∂weight, ∂L/∂bias) in the parameters' dtypes) of :func:`_conv`."""
    g_a, g_w, g_b = torch.ops.aten.convolution_backward(
        g, a, w, [w.shape[0]], [1, 1], *padding_dilation, False, [0, 0], 1, [True] * 3
    )
    return g_a, tuple(_cast(t, p.dtype) for t, p in zip((g_w, g_b), params))


def _padding_dilation(d) -> tuple[list, list]:
    """A dilated layer's padding and dilation as the aten calls take them."""
    return list(d.padding), list(d.conv.dilation)


class _Saved(NamedTuple):
    """What the backward needs (all small but x): maps, the channel branch's and the spatial one's."""

    mlp: torch.Tensor | None  # channel_mlp_fwd's buffer: mc (N, C) in its first N·C values, then what it saves
    ms: torch.Tensor | None  # (N, 1, H, W)
    p: torch.Tensor | None  # (N, C) the pooled means, compute dtype
    bn_r: _SavedBN | None
    a_r: torch.Tensor | None  # ReLU(BN_r(z0))
    dilated: tuple  # (weight as used, _SavedBN, ReLU output) per dilated convolution
    final_w: torch.Tensor | None  # the final 1×1 convolution's weight as used
    a_last: torch.Tensor | None  # its input
    bn_s: _SavedBN | None


def _forward(x: torch.Tensor, call: FusedCall, params, keep: bool):
    """``(y, _Saved or None)``: the module on x (N, C, H, W) in a kernel layout."""
    from .kernels import gate_fwd
    from .kernels.channel_mlp import channel_mlp_fwd
    from .kernels.pool_reduce import pool_reduce

    s, dt = call.structure, call.branch_dtype
    w = _by_layer(s, params)
    reduce = w.get(s.reduce, (None, None))
    pool_part, z0 = pool_reduce(x, *reduce, pool=s.fc0 is not None, dot_dtype=dt)
    ms = p = mlp = bn_r = a = a_r = final_w = bn_s = None
    dilated = ()
    if s.fc0 is not None:
        p = pool_part.sum(1)
        bnc = _bn_args(call.bns[s.bn_c], w[s.bn_c]) if s.bn_c is not None else None
        bn1 = _bn_args(call.bns[s.bn1], w[s.bn1])
        mlp = channel_mlp_fwd(p, *w[s.fc0], bn1, *w[s.fc_final], bnc, dt)
    if s.reduce is not None:
        out, bn_r = _batch_norm(z0, call.bns[s.bn_r], w[s.bn_r])
        a = a_r = torch.relu_(out)
        for d in s.dilated:
            c, used_w = _conv(a, w[d.conv], dt, _padding_dilation(d))
            out, saved_bn = _batch_norm(c, call.bns[d.bn], w[d.bn])
            a = torch.relu_(out)
            dilated += ((used_w, saved_bn, a),)
        ms, final_w = _conv(a, w[s.conv_final], dt)
        if s.bn_s is not None:
            ms, bn_s = _batch_norm(ms, call.bns[s.bn_s], w[s.bn_s])
    y = gate_fwd(x, mlp, ms, combine=call.combine, residual=True)  # mc: mlp's first N·C values
    if not keep:
        return y, None
    return y, _Saved(mlp, ms, p, bn_r, a_r, dilated, final_w, a, bn_s)


def _backward(g: torch.Tensor, x: torch.Tensor, call: FusedCall, params, saved: _Saved) -> list:
    """(∂L/∂x, then one gradient per parameter), first order, by the kernels and aten's backward calls."""
    from .common import compute_dtype
    from .kernels.channel_mlp import channel_mlp_bwd
    from .kernels.gate_bwd import bwd_plan, launch_gate_bwd_stage_one, launch_gate_bwd_stage_two
    from .kernels.input_grad import input_grad, input_grad_plan

    s = call.structure
    w = _by_layer(s, params)
    N, C, H, W = x.shape
    plan = bwd_plan(x)
    # Stage one's partials, and then (once stage two has read them) input_grad's, in one buffer.
    h = s.hidden
    ig_plan = input_grad_plan(x.shape, x.stride(), x.dtype, x.device, h, call.branch_dtype)
    parts_numel = max(plan.parts_numel, ig_plan.part_numel if h else 0)
    parts = torch.empty(parts_numel, device=x.device, dtype=compute_dtype(x.dtype))
    launch_gate_bwd_stage_one(g, x, saved.mlp, saved.ms, None, parts, plan, combine=call.combine, residual=True)
    gmc = torch.empty((N, C), device=x.device, dtype=call.branch_dtype) if saved.mlp is not None else None
    gms = torch.empty_like(saved.ms) if saved.ms is not None else None
    launch_gate_bwd_stage_two(parts, gmc, gms, plan)

    # The channel branch's and the reduce convolution's gradients share one buffer (kernels write
    # them): the layers before the spatial branch's first BatchNorm, in Structure.layers' order.
    in_buffer = s.layers[: s.layers.index(s.bn_r)] if s.reduce is not None else s.layers
    fused = [t for m in in_buffer for t in w[m]]
    sizes = [t.numel() for t in fused]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    grad_buf = torch.empty(sum(sizes), device=x.device, dtype=fused[0].dtype)

    grads = {}  # layer → (∂L/∂weight, ∂L/∂bias)
    g_z0 = None
    if s.reduce is not None:
        g_t = gms
        if s.bn_s is not None:
            g_t, *grads[s.bn_s] = _batch_norm_backward(g_t, call.bns[s.bn_s], w[s.bn_s][0], saved.bn_s)
        g_a, grads[s.conv_final] = _conv_backward(g_t, saved.a_last, saved.final_w, w[s.conv_final])
        for i in reversed(range(len(s.dilated))):
            d = s.dilated[i]
            used_w, saved_bn, a = saved.dilated[i]
            g_c = torch.ops.aten.threshold_backward(g_a, a, 0)
            g_c, *grads[d.bn] = _batch_norm_backward(g_c, call.bns[d.bn], w[d.bn][0], saved_bn)
            a_in = saved.dilated[i - 1][2] if i else saved.a_r
            g_a, grads[d.conv] = _conv_backward(g_c, a_in, used_w, w[d.conv], _padding_dilation(d))
        g_r = torch.ops.aten.threshold_backward(g_a, saved.a_r, 0)
        g_z0, *grads[s.bn_r] = _batch_norm_backward(g_r, call.bns[s.bn_r], w[s.bn_r][0], saved.bn_r)

    if s.fc0 is not None:  # ∂L/∂p lands over gmc
        bnc = _bn_args(call.bns[s.bn_c], w[s.bn_c]) if s.bn_c is not None else None
        bn1 = _bn_args(call.bns[s.bn1], w[s.bn1])
        mlp_offsets = offsets[: len(offsets) - 2] if s.reduce is not None else offsets
        channel_mlp_bwd(gmc, saved.p, saved.mlp, w[s.fc0][0], bn1, w[s.fc_final][0], bnc, grad_buf, mlp_offsets)
    has_reduce = s.reduce is not None
    gx = input_grad(
        g,
        x,
        saved.mlp,
        saved.ms,
        gmc,
        g_z0,
        w[s.reduce][0] if has_reduce else None,
        combine=call.combine,
        residual=True,
        grads=grad_buf,
        grad_offsets=tuple(offsets[-2:]) if has_reduce else (0, 0),
        part=parts,
    )
    views = iter(t if p.dim() == 1 else t.view(p.shape) for t, p in zip(grad_buf.split_with_sizes(sizes), fused))
    for m in in_buffer:
        grads[m] = (next(views), next(views))
    return [gx, *(t for m in s.layers for t in grads[m])]


def _functional(x: torch.Tensor, call: FusedCall, params) -> torch.Tensor:
    """The module in differentiable PyTorch ops on the forward's statistics (the batch's, or the
    running ones as they were), updating nothing: what a create_graph backward differentiates."""
    import torch.nn.functional as F

    from . import reference

    s = call.structure
    w = _by_layer(s, params)

    def bn(t, module):
        c = call.bns[module]
        rm, rv = (None, None) if c.batch_stats else (c.running_mean, c.running_var)
        return F.batch_norm(t, rm, rv, *w[module], c.batch_stats, 0.0, c.eps)

    mc = ms = None
    if s.fc0 is not None:
        u1 = F.linear(x.mean((2, 3)), *w[s.fc0])
        a1 = F.relu(bn(u1, s.bn1))
        mc = F.linear(a1, *w[s.fc_final])
        if s.bn_c is not None:
            mc = bn(mc, s.bn_c)
    if s.reduce is not None:
        a = F.relu(bn(F.conv2d(x, *w[s.reduce]), s.bn_r))
        for d in s.dilated:
            a = F.relu(bn(F.conv2d(a, *w[d.conv], padding=d.padding, dilation=d.conv.dilation), d.bn))
        ms = F.conv2d(a, *w[s.conv_final])
        if s.bn_s is not None:
            ms = bn(ms, s.bn_s)
    N, C, H, W = x.shape
    return reference.bam_gate(x, mc, ms.reshape(N, H, W) if ms is not None else None, call.combine, True)


class _FusedBAMFunction(torch.autograd.Function):
    """The whole module, one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, call: FusedCall, *params):
        y, saved = _forward(x, call, params, keep=True)
        ctx.call = call
        ctx.branch_tensors = saved
        ctx.save_for_backward(x, *params)
        return y

    @staticmethod
    def backward(ctx, g):
        x, *params = ctx.saved_tensors
        call = ctx.call
        if torch.is_grad_enabled():
            # create_graph: the kernels' gradients are not themselves differentiable, so the
            # backward is recomputed in PyTorch ops that are (second order stays exact).
            with torch.autocast(x.device.type, dtype=call.branch_dtype, enabled=call.autocast):
                y = _functional(x, call, params)
            inputs = [t for t in (x, *params) if t.requires_grad]
            got = iter(torch.autograd.grad(y, inputs, g, create_graph=True, allow_unused=True))
            return (
                (next(got) if x.requires_grad else None),
                None,
                *(next(got) if p.requires_grad else None for p in params),
            )
        grads = _backward(g, x, call, params, ctx.branch_tensors)
        return grads[0], None, *grads[1:]


def fused_bam(x: torch.Tensor, call: FusedCall) -> torch.Tensor:
    """The module ``call`` was planned for (:func:`bam_fused.fused_path.check_fused_path`) on x
    (N, C, H, W), as one autograd node: (N, C, H, W) in x's dtype and memory format. Raises
    ``call.error`` (what eager BAM raises) before anything changes."""
    from .kernels.layout import as_kernel_layout

    if call.error is not None:
        raise call.error
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in call.params))
    if call.counted:  # as nn.BatchNorm counts its batches; one foreach call for all
        torch._foreach_add_(call.counted, 1)
    if keep:  # eval-mode statistics as this forward reads them, for the backward
        call = call._replace(bns={bn: _frozen(c) for bn, c in call.bns.items()})
    x = as_kernel_layout(x)
    with torch.autocast(x.device.type, enabled=False) if call.autocast else contextlib.nullcontext():
        if keep:
            return _FusedBAMFunction.apply(x, call, *call.params)
        return _forward(x, call, call.params, keep=False)[0]


def step_on_meta(x: torch.Tensor, call: FusedCall) -> None:
    """A training step of ``call`` on meta tensors shaped like x and the call's: the kernels a real
    step launches, with nothing computed (``bam_fused.preflight``)."""
    params = tuple(meta_like(p, p.requires_grad) for p in call.params)
    bns = {
        bn: c._replace(running_mean=meta_like(c.running_mean), running_var=meta_like(c.running_var))
        for bn, c in call.bns.items()
    }
    meta_call = call._replace(params=params, bns=bns, counted=[], autocast=False)  # (its dtypes are explicit)
    backward_both_ways(fused_bam(meta_like(x, requires_grad=True), meta_call))


def _frozen(c: BatchNormCall) -> BatchNormCall:
    """c with copies of the running statistics it normalises with but does not update."""
    if c.update or c.batch_stats:
        return c
    return c._replace(running_mean=c.running_mean.clone(), running_var=c.running_var.clone())
