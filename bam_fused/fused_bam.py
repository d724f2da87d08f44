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

Eight passes over tensors of x's size (SPEC, "The whole module"); nothing of x's size is saved
but x. Where this path cannot reproduce the eager module exactly, :func:`fused_path_blocker`
names the reason and ``FusedBAM`` runs the per-op path instead (the branches as nn.Modules
through autograd, the gate fused).
"""

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from .common import FLOAT_DTYPES

_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class _Branches(NamedTuple):
    """The submodules one call uses, read straight from ``_modules`` (cheap, and never stale)."""

    fc0: nn.Linear | None
    bn1: nn.BatchNorm1d | None
    fc_final: nn.Linear | None
    bn_c: nn.BatchNorm1d | None  # paper variant only
    reduce: nn.Conv2d | None
    bn_r: nn.BatchNorm2d | None
    dilated: tuple  # ((conv, bn), ...)
    conv_final: nn.Conv2d | None
    bn_s: nn.BatchNorm2d | None  # paper variant only


def _branches(module) -> _Branches | str:
    """The module's submodules in the order the fused path uses them, or why they do not fit it."""
    fc0 = bn1 = fc_final = bn_c = reduce = bn_r = conv_final = bn_s = None
    dilated = ()
    if module.channel_att is not None:
        gate_c = module.channel_att._modules["gate_c"]._modules
        expected = {"flatten", "gate_c_fc_0", "gate_c_bn_1", "gate_c_relu_1", "gate_c_fc_final", "gate_c_bn_final"}
        if not set(gate_c) <= expected:
            return f"the channel branch has other layers ({sorted(set(gate_c) - expected)})"
        fc0, bn1, fc_final = gate_c["gate_c_fc_0"], gate_c["gate_c_bn_1"], gate_c["gate_c_fc_final"]
        bn_c = gate_c.get("gate_c_bn_final")
    if module.spatial_att is not None:
        gate_s = module.spatial_att._modules["gate_s"]._modules
        reduce, bn_r = gate_s["gate_s_conv_reduce0"], gate_s["gate_s_bn_reduce0"]
        dilated = tuple(
            (gate_s[f"gate_s_conv_di_{i}"], gate_s[f"gate_s_bn_di_{i}"]) for i in range(module.dilation_conv_num)
        )
        conv_final, bn_s = gate_s["gate_s_conv_final"], gate_s.get("gate_s_bn_final")
    return _Branches(fc0, bn1, fc_final, bn_c, reduce, bn_r, dilated, conv_final, bn_s)


def _exact_types(branches: _Branches) -> str | None:
    """Why a submodule is not the plain layer the fused path reproduces (subclass, SyncBatchNorm), or None."""
    kinds = (
        (nn.Linear, (branches.fc0, branches.fc_final)),
        (nn.BatchNorm1d, (branches.bn1, branches.bn_c)),
        (nn.Conv2d, (branches.reduce, branches.conv_final, *(conv for conv, _ in branches.dilated))),
        (nn.BatchNorm2d, (branches.bn_r, branches.bn_s, *(bn for _, bn in branches.dilated))),
    )
    for cls, modules in kinds:
        for m in modules:
            if m is not None and type(m) is not cls:
                return f"{type(m).__name__} where the fused path computes a {cls.__name__}"
    return None


def fused_path_blocker(module, x: torch.Tensor) -> str | None:
    """Why ``module`` (a FusedBAM) cannot run its fused path on ``x``, or None when it can.

    The per-op path is exact by construction; the fused one reproduces plain Linear, Conv2d and
    BatchNorm layers through autograd, so anything that observes or changes those layers
    (hooks, SyncBatchNorm or other subclasses, parameters replaced by plain tensors), a tracer or
    a transform that must see every op, and shapes the one-program channel branch cannot hold
    go the per-op way.
    """
    checked = check_fused_path(module, x)
    return checked if isinstance(checked, str) else None


def _hooked(module: nn.Module) -> nn.Module | None:
    """A submodule of ``module`` with a forward or backward hook, if any (a plain walk of the
    ``_modules`` dicts: ``module.modules()`` cost 50 µs a call here)."""
    stack = list(module._modules.values())
    while stack:
        m = stack.pop()
        if m is None:
            continue
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return m
        stack.extend(m._modules.values())
    return None


def check_fused_path(module, x: torch.Tensor) -> "_Branches | str":
    """The module's branches when its fused path can run on x, else why not (see fused_path_blocker)."""
    from .kernels.channel_mlp import mlp_fits
    from .ops import triton_can_run

    if module.gate_backend == "reference" or not triton_can_run(x):
        return "the kernels cannot run here"
    if type(module).attention_maps.__qualname__ != "BAM.attention_maps":
        return f"{type(module).__name__} overrides attention_maps, which the fused path would not run"
    if torch.jit.is_tracing():
        return "torch.jit.trace records aten ops"
    if x.dtype not in FLOAT_DTYPES:
        return f"x is {x.dtype}"
    if torch.autograd.forward_ad._current_level >= 0 or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return "forward-mode AD and torch.func transforms need the per-op path"
    N, C, H, W = x.shape
    if N == 0 or H * W == 0 or C == 0:
        return "an empty batch or map"
    if any(getattr(torch.nn.modules.module, name) for name in _GLOBAL_HOOKS):
        return "global module hooks are registered"
    hooked = _hooked(module)
    if hooked is not None:
        return f"a hook is registered on {type(hooked).__name__}"
    branches = _branches(module)
    if isinstance(branches, str):
        return branches
    reason = _exact_types(branches)
    if reason:
        return reason
    for m in _layers(branches):
        if m._parameters.get("weight") is None or m._parameters.get("bias") is None:
            return f"{type(m).__name__}'s weight or bias is not a Parameter"
    if branches.fc0 is not None and not mlp_fits(N, branches.fc0.out_features):
        return f"a batch of {N} is more than one program holds for the channel branch"
    convs = (branches.reduce, branches.conv_final, *(conv for conv, _ in branches.dilated))
    for conv in (c for c in convs if c is not None):
        if conv.groups != 1 or conv.stride != (1, 1) or conv.padding_mode != "zeros":
            return "a convolution with groups, stride or padding mode other than the module's"
    if branches.reduce is not None and branches.reduce.kernel_size != (1, 1):
        return "a reduce convolution that is not 1×1"
    if any(bn.momentum is None and bn.training and bn.track_running_stats for bn in _bns(branches)):
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return "momentum=None reads num_batches_tracked on the host, which a CUDA graph capture forbids"
    return branches


def _layers(branches: _Branches):
    """Every parametrised layer of the call in the fused path's order: the channel branch's, then
    the spatial branch's; absent ones skipped."""
    for m in (branches.fc0, branches.bn1, branches.fc_final, branches.bn_c, branches.reduce, branches.bn_r):
        if m is not None:
            yield m
    for conv, bn in branches.dilated:
        yield conv
        yield bn
    for m in (branches.conv_final, branches.bn_s):
        if m is not None:
            yield m


def _bns(branches: _Branches):
    return (m for m in _layers(branches) if isinstance(m, nn.modules.batchnorm._BatchNorm))


class _BatchNormCall(NamedTuple):
    """How one nn.BatchNorm runs in this call (its forward's logic, replicated)."""

    module: nn.Module
    batch_stats: bool  # normalise with the batch's statistics
    update: bool  # update the running statistics
    momentum: float  # their factor this call (0 when not updated)
    running_mean: torch.Tensor | None  # the buffers it updates, or copies of those it normalises with in
    running_var: torch.Tensor | None  # eval mode (a backward must see them as the forward read them)


def _batch_norm_calls(branches: _Branches, keep: bool) -> list[_BatchNormCall]:
    """Each BatchNorm's mode this call (``keep``: a backward will follow); increments
    num_batches_tracked as nn.BatchNorm does (one foreach call for all)."""
    bns = list(_bns(branches))
    counted = [bn.num_batches_tracked for bn in bns if bn.training and bn.track_running_stats]
    if counted:
        torch._foreach_add_(counted, 1)
    out = []
    for bn in bns:
        update = bn.training and bn.track_running_stats
        batch_stats = bn.training or bn.running_mean is None
        momentum = 0.0
        if update:
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        rm, rv = bn.running_mean, bn.running_var
        if not (update or batch_stats):
            rm, rv = (rm.clone(), rv.clone()) if keep else (rm, rv)
        elif not update:
            rm = rv = None
        out.append(_BatchNormCall(bn, batch_stats, update, momentum, rm, rv))
    return out


class _Call(NamedTuple):
    """What one call of the fused path needs besides its tensors."""

    branches: _Branches
    bn_calls: dict  # nn.BatchNorm → _BatchNormCall
    combine: str
    branch_dtype: torch.dtype  # autocast's dtype, or x's
    autocast: bool


def _unflatten(branches: _Branches, flat) -> _Branches:
    """``flat`` (a value per weight and bias, in :func:`_layers` order) as (weight, bias) pairs in
    the places of ``branches``' layers."""
    it = iter(flat)
    pair = lambda m: (next(it), next(it)) if m is not None else None  # noqa: E731
    first = [pair(m) for m in (branches.fc0, branches.bn1, branches.fc_final, branches.bn_c, branches.reduce)]
    bn_r = pair(branches.bn_r)
    dilated = tuple((pair(conv), pair(bn)) for conv, bn in branches.dilated)
    return _Branches(*first, bn_r, dilated, pair(branches.conv_final), pair(branches.bn_s))


def _params(branches: _Branches) -> list:
    """The call's parameters in :func:`_layers` order, read from ``_parameters`` (no __getattr__)."""
    return [m._parameters[name] for m in _layers(branches) for name in ("weight", "bias")]


def _bn_args(call: _BatchNormCall, weight_bias):
    from .kernels.channel_mlp import BatchNormArgs

    weight, bias = weight_bias
    return BatchNormArgs(
        weight,
        bias,
        call.running_mean,
        call.running_var,
        call.module.eps,
        call.momentum,
        call.batch_stats,
        call.update,
    )


class _SavedBN(NamedTuple):
    """What one BatchNorm's backward needs beside its call."""

    input: torch.Tensor
    mean: torch.Tensor  # the batch's (empty in eval mode)
    invstd: torch.Tensor


def _batch_norm(t, call: _BatchNormCall, weight_bias):
    """One BatchNorm on t, as nn.BatchNorm runs it this call: ``(out, _SavedBN)``."""
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        t, *weight_bias, call.running_mean, call.running_var, call.batch_stats, call.momentum, call.module.eps
    )
    return out, _SavedBN(t, mean, invstd)


def _batch_norm_backward(g, call: _BatchNormCall, weight, saved: _SavedBN):
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
        call.module.eps,
        [True] * 3,
    )


def _cast(w, dtype):
    """w in ``dtype``: a parameter as autocast hands it to a convolution, or its gradient back."""
    return w if w.dtype == dtype else w.to(dtype)


def _conv(a, conv: nn.Conv2d, weight_bias, dtype):
    """``(out, weight as used)``: the convolution on a, its parameters in the branch's dtype."""
    w, bias = (_cast(t, dtype) for t in weight_bias)
    out = torch.ops.aten.convolution(a, w, bias, [1, 1], list(conv.padding), list(conv.dilation), False, [0, 0], 1)
    return out, w


def _conv_backward(g, a, w, conv: nn.Conv2d, params):
    """(∂L/∂a, (∂L/∂weight, ∂L/∂bias) in the parameters' dtypes)."""
    g_a, g_w, g_b = torch.ops.aten.convolution_backward(
        g, a, w, [w.shape[0]], [1, 1], list(conv.padding), list(conv.dilation), False, [0, 0], 1, [True] * 3
    )
    return g_a, tuple(_cast(t, p.dtype) for t, p in zip((g_w, g_b), params))


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


def _forward(x: torch.Tensor, call: _Call, params, keep: bool):
    """``(y, _Saved or None)``: the module on x (N, C, H, W) in a kernel layout."""
    from .kernels import gate_fwd
    from .kernels.channel_mlp import channel_mlp_fwd
    from .kernels.pool_reduce import pool_reduce

    b, dt = call.branches, call.branch_dtype
    w = _unflatten(b, params)
    reduce = w.reduce or (None, None)
    pool_part, z0 = pool_reduce(x, *reduce, pool=b.fc0 is not None, dot_dtype=dt)
    ms = p = mlp = bn_r = a = final_w = bn_s = None
    dilated = ()
    if b.fc0 is not None:
        p = pool_part.sum(1)
        bnc = _bn_args(call.bn_calls[b.bn_c], w.bn_c) if b.bn_c is not None else None
        bn1 = _bn_args(call.bn_calls[b.bn1], w.bn1)
        mlp = channel_mlp_fwd(p, *w.fc0, bn1, *w.fc_final, bnc, dt)
    if b.reduce is not None:
        out, bn_r = _batch_norm(z0, call.bn_calls[b.bn_r], w.bn_r)
        a = a_r = torch.relu_(out)
        for (conv, bn), (conv_w, bn_w) in zip(b.dilated, w.dilated):
            d, used_w = _conv(a, conv, conv_w, dt)
            out, saved_bn = _batch_norm(d, call.bn_calls[bn], bn_w)
            a = torch.relu_(out)
            dilated += ((used_w, saved_bn, a),)
        ms, final_w = _conv(a, b.conv_final, w.conv_final, dt)
        if b.bn_s is not None:
            ms, bn_s = _batch_norm(ms, call.bn_calls[b.bn_s], w.bn_s)
    y = gate_fwd(x, mlp, ms, combine=call.combine, residual=True)  # mc: mlp's first N·C values
    if not keep:
        return y, None
    return y, _Saved(mlp, ms, p, bn_r, a_r if b.reduce is not None else None, dilated, final_w, a, bn_s)


def _backward(g: torch.Tensor, x: torch.Tensor, call: _Call, params, s: _Saved) -> list:
    """(∂L/∂x, then one gradient per parameter), first order, by the kernels and aten's backward calls."""
    from .common import compute_dtype
    from .kernels.channel_mlp import channel_mlp_bwd
    from .kernels.gate_bwd import bwd_plan, launch_gate_bwd_stage_one, launch_gate_bwd_stage_two
    from .kernels.input_grad import input_grad, input_grad_plan

    b = call.branches
    w = _unflatten(b, params)
    N, C, H, W = x.shape
    plan = bwd_plan(x)
    # Stage one's partials, and then (once stage two has read them) input_grad's, in one buffer.
    h = w.reduce[0].shape[0] if b.reduce is not None else 0
    ig_plan = input_grad_plan(x.shape, x.stride(), x.dtype, x.device, h, call.branch_dtype)
    parts_numel = max(plan.parts_numel, ig_plan.part_numel if h else 0)
    parts = torch.empty(parts_numel, device=x.device, dtype=compute_dtype(x.dtype))
    launch_gate_bwd_stage_one(g, x, s.mlp, s.ms, None, parts, plan, combine=call.combine, residual=True)
    gmc = torch.empty((N, C), device=x.device, dtype=call.branch_dtype) if s.mlp is not None else None
    gms = torch.empty_like(s.ms) if s.ms is not None else None
    launch_gate_bwd_stage_two(parts, gmc, gms, plan)

    # The channel branch's and the reduce convolution's gradients share one buffer (kernels write them).
    in_buffer = [m for m in (b.fc0, b.bn1, b.fc_final, b.bn_c, b.reduce) if m is not None]
    fused = [t for m in in_buffer for t in (m._parameters["weight"], m._parameters["bias"])]
    sizes = [t.numel() for t in fused]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    grad_buf = torch.empty(sum(sizes), device=x.device, dtype=fused[0].dtype)

    grads = {}  # layer → (∂L/∂weight, ∂L/∂bias)
    g_z0 = None
    if b.reduce is not None:
        g_t = gms
        if b.bn_s is not None:
            g_t, *grads[b.bn_s] = _batch_norm_backward(g_t, call.bn_calls[b.bn_s], w.bn_s[0], s.bn_s)
        g_a, grads[b.conv_final] = _conv_backward(g_t, s.a_last, s.final_w, b.conv_final, w.conv_final)
        for i in reversed(range(len(b.dilated))):
            (conv, bn), (conv_w, bn_w) = b.dilated[i], w.dilated[i]
            used_w, saved_bn, a = s.dilated[i]
            g_d = torch.ops.aten.threshold_backward(g_a, a, 0)
            g_c, *grads[bn] = _batch_norm_backward(g_d, call.bn_calls[bn], bn_w[0], saved_bn)
            a_in = s.dilated[i - 1][2] if i else s.a_r
            g_a, grads[conv] = _conv_backward(g_c, a_in, used_w, conv, conv_w)
        g_r = torch.ops.aten.threshold_backward(g_a, s.a_r, 0)
        g_z0, *grads[b.bn_r] = _batch_norm_backward(g_r, call.bn_calls[b.bn_r], w.bn_r[0], s.bn_r)

    if b.fc0 is not None:  # ∂L/∂p lands over gmc
        bnc = _bn_args(call.bn_calls[b.bn_c], w.bn_c) if b.bn_c is not None else None
        bn1 = _bn_args(call.bn_calls[b.bn1], w.bn1)
        mlp_offsets = offsets[: len(offsets) - 2] if b.reduce is not None else offsets
        channel_mlp_bwd(gmc, s.p, s.mlp, w.fc0[0], bn1, w.fc_final[0], bnc, grad_buf, mlp_offsets)
    has_reduce = b.reduce is not None
    gx = input_grad(
        g,
        x,
        s.mlp,
        s.ms,
        gmc,
        g_z0,
        w.reduce[0] if has_reduce else None,
        combine=call.combine,
        residual=True,
        grads=grad_buf,
        grad_offsets=tuple(offsets[-2:]) if has_reduce else (0, 0),
        part=parts,
    )
    views = iter(t if p.dim() == 1 else t.view(p.shape) for t, p in zip(grad_buf.split_with_sizes(sizes), fused))
    for m in in_buffer:
        grads[m] = (next(views), next(views))
    return [gx, *(t for m in _layers(b) for t in grads[m])]


def _call_info(module, x: torch.Tensor, branches: _Branches, keep: bool) -> _Call:
    """The call's modes and dtypes. Raises nn.BatchNorm's error for one value per channel in
    training before anything runs, having counted that batch as nn.BatchNorm does."""
    N, C, H, W = x.shape
    first = next(_bns(branches))  # the first BatchNorm to run: the only one that can see a single value
    per_channel = N if isinstance(first, nn.BatchNorm1d) else N * H * W
    if (first.training or first.running_mean is None) and per_channel == 1:
        if first.training and first.track_running_stats:
            first.num_batches_tracked.add_(1)
        shape = (N, first.num_features) + (() if isinstance(first, nn.BatchNorm1d) else (H, W))
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {torch.Size(shape)}")
    autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
    branch_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    bn_calls = {call.module: call for call in _batch_norm_calls(branches, keep)}
    return _Call(branches, bn_calls, module.combine, branch_dtype, autocast)


def _functional(x: torch.Tensor, call: _Call, params) -> torch.Tensor:
    """The module in differentiable PyTorch ops on the forward's statistics (the batch's, or the
    running ones as they were), updating nothing: what a create_graph backward differentiates."""
    import torch.nn.functional as F

    from . import reference

    b = call.branches
    w = _unflatten(b, params)

    def bn(t, module, weight_bias):
        c = call.bn_calls[module]
        rm, rv = (None, None) if c.batch_stats else (c.running_mean, c.running_var)
        return F.batch_norm(t, rm, rv, *weight_bias, c.batch_stats, 0.0, module.eps)

    mc = ms = None
    if b.fc0 is not None:
        u1 = F.linear(x.mean((2, 3)), *w.fc0)
        a1 = F.relu(bn(u1, b.bn1, w.bn1))
        mc = F.linear(a1, *w.fc_final)
        if b.bn_c is not None:
            mc = bn(mc, b.bn_c, w.bn_c)
    if b.reduce is not None:
        a = F.relu(bn(F.conv2d(x, *w.reduce), b.bn_r, w.bn_r))
        for (conv, bn_m), (conv_w, bn_w) in zip(b.dilated, w.dilated):
            a = F.relu(bn(F.conv2d(a, *conv_w, padding=conv.padding, dilation=conv.dilation), bn_m, bn_w))
        ms = F.conv2d(a, *w.conv_final)
        if b.bn_s is not None:
            ms = bn(ms, b.bn_s, w.bn_s)
    N, C, H, W = x.shape
    return reference.bam_gate(x, mc, ms.reshape(N, H, W) if ms is not None else None, call.combine, True)


class _FusedBAMFunction(torch.autograd.Function):
    """The whole module, one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, call: _Call, *params):
        y, saved = _forward(x, call, params, keep=True)
        ctx.call = call
        ctx.layout = saved
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
        grads = _backward(g, x, call, params, ctx.layout)
        return grads[0], None, *grads[1:]


def fused_bam(module, x: torch.Tensor, branches: _Branches | None = None) -> torch.Tensor:
    """``module`` (a FusedBAM whose :func:`fused_path_blocker` is None) on x (N, C, H, W), as one
    node; ``branches``: its :func:`check_fused_path` result, when the caller has it."""
    from .kernels.layout import as_kernel_layout

    branches = branches or _branches(module)
    params = _params(branches)
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    call = _call_info(module, x, branches, keep)
    x = as_kernel_layout(x)
    with torch.autocast(x.device.type, enabled=False) if call.autocast else contextlib.nullcontext():
        if keep:
            return _FusedBAMFunction.apply(x, call, *params)
        return _forward(x, call, params, keep=False)[0]
