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

What a call computes is described here without the module (:class:`FusedCall`: plain values
and tensors), so that the same forward and backward serve two bindings: an ``autograd.Function``
for eager calls (:func:`fused_bam`), and the ``bam_fused::module`` / ``module_backward`` custom
ops with fake implementations and an autograd formula, which ``torch.compile`` records
(:func:`fused_bam_op`). Which calls take this path, and the FusedCall for each, is decided by
:mod:`bam_fused.fused_path`.

A BatchNorm with ``momentum=None`` (the cumulative average) updates its running statistics by
the factor 1 / num_batches_tracked computed on the device, not read on the host: the call makes
no host synchronisation, so a CUDA graph can capture it and torch.compile trace it.
"""

import contextlib
import functools
import hashlib
import importlib.util
import itertools
import operator
from pathlib import Path
from typing import NamedTuple

import torch

from .preflight import backward_both_ways, meta_like


class LayerSpec(NamedTuple):
    """The layers the fused path computes, as plain values (a branch that is absent has width 0).

    Each parametrised layer runs in the order of :class:`Parts`' fields (the dilated layers as a
    convolution and a BatchNorm each): the order of :attr:`FusedCall.params` (weight, bias of
    each), of the gradients the backward returns, and of the kernels' gradient buffer (its first
    layers: the channel branch's, then the reduce convolution's)."""

    channels: int  # C
    mlp_hidden: int  # the channel branch's width (0: no channel branch)
    channel_bn: bool  # its final BatchNorm (the paper variant's)
    hidden: int  # the spatial branch's width h (0: no spatial branch)
    dilated: tuple  # ((padding_h, padding_w), (dilation_h, dilation_w)) of each dilated convolution
    spatial_bn: bool  # the spatial branch's final BatchNorm (the paper variant's)

    def to_ints(self) -> list[int]:
        """The spec as a custom op takes it (:meth:`from_ints` reads it back)."""
        head = [self.channels, self.mlp_hidden, self.channel_bn, self.hidden, self.spatial_bn]
        return [int(v) for v in head] + [v for padding, dilation in self.dilated for v in (*padding, *dilation)]

    @staticmethod
    def from_ints(ints) -> "LayerSpec":
        C, mlp_hidden, channel_bn, hidden, spatial_bn, *rest = ints
        dilated = tuple((tuple(rest[i : i + 2]), tuple(rest[i + 2 : i + 4])) for i in range(0, len(rest), 4))
        return LayerSpec(C, mlp_hidden, bool(channel_bn), hidden, dilated, bool(spatial_bn))


class BatchNormMode(NamedTuple):
    """How one BatchNorm runs in a call: ``nn.BatchNorm.forward``'s decisions, replicated."""

    batch_stats: bool  # normalise with the batch's statistics (training, or no running ones)
    update: bool  # update the running statistics
    cumulative: bool  # by 1 / num_batches_tracked (momentum=None), found on the device
    momentum: float  # by this factor otherwise (0.0 when they are not updated)
    eps: float
    running: bool  # the call hands over the running statistics (read, or updated)
    counted: bool  # the call increments num_batches_tracked


class FusedCall(NamedTuple):
    """Everything one call of the fused path needs besides x."""

    spec: LayerSpec
    bns: tuple  # BatchNormMode of each BatchNorm, in the order they run
    combine: str
    branch_dtype: torch.dtype  # autocast's dtype for the branches, or x's
    autocast: bool  # the branches run under autocast (their intermediates rounded to branch_dtype)
    params: tuple  # (weight, bias) of each layer in LayerSpec' order, flattened
    running: tuple  # (running_mean, running_var) of each BatchNorm whose mode hands them over, flattened
    counts: tuple  # num_batches_tracked of each BatchNorm whose mode counts
    error: Exception | None  # what eager BAM raises for this call, found before any effect


class _BatchNorm(NamedTuple):
    """One BatchNorm of a call: its parameters (first, as a layer's pair), mode and buffers (None
    where the mode takes none)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mode: BatchNormMode
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    count: torch.Tensor | None  # num_batches_tracked


class Parts(NamedTuple):
    """A call's layers by role, in the order they run: (weight, bias) pairs, _BatchNorm records,
    ``dilated`` a (convolution pair, _BatchNorm, (padding, dilation)) per dilated layer; None
    where absent. The same roles hold gradients in the backward."""

    fc0: tuple | None
    bn1: _BatchNorm | None
    fc_final: tuple | None
    bn_c: _BatchNorm | None
    reduce: tuple | None
    bn_r: _BatchNorm | None
    dilated: tuple
    conv_final: tuple | None
    bn_s: _BatchNorm | None


def run_order(parts: Parts) -> tuple:
    """``parts``' layers (anything held per layer: modules, gradient pairs) in the order they run,
    absent ones left out; a dilated layer's first two entries (convolution, BatchNorm) in turn."""
    dilated = itertools.chain.from_iterable(d[:2] for d in parts.dilated)
    return tuple(m for m in (*parts[:6], *dilated, *parts[7:]) if m is not None)


def _unflatten(call: FusedCall, frozen=None, params=None) -> Parts:
    """``call``'s tensors by role (:class:`Parts`), with ``params`` for its parameters if given.
    With ``frozen`` (the backward's): no counts, and as running statistics only those eval-mode
    BatchNorms normalised with, taken from it. (Every call runs this twice: the records are built
    with ``tuple.__new__``, a third of the cost of the NamedTuples' own constructors.)"""
    spec, new = call.spec, tuple.__new__
    pairs = iter(call.params if params is None else params)
    layers = list(zip(pairs, pairs))  # (weight, bias) of each layer, in run order
    running = iter(call.running if frozen is None else frozen)
    counts = iter(call.counts if frozen is None else ())
    bn_at, s, k = _positions(spec)
    for i, mode in zip(bn_at, call.bns):
        weight, bias = layers[i]
        count = next(counts) if mode.counted and frozen is None else None
        if mode.running if frozen is None else not mode.batch_stats:
            layers[i] = new(_BatchNorm, (weight, bias, mode, next(running), next(running), count))
        else:
            layers[i] = new(_BatchNorm, (weight, bias, mode, None, None, count))
    channel = (layers[0], layers[1], layers[2], layers[3] if spec.channel_bn else None) if spec.mlp_hidden else None
    if not spec.hidden:
        return new(Parts, (*channel, None, None, (), None, None))
    dilated = tuple((layers[s + 2 + 2 * i], layers[s + 3 + 2 * i], d) for i, d in enumerate(spec.dilated))
    bn_s = layers[s + 3 + 2 * k] if spec.spatial_bn else None
    return new(Parts, (*(channel or (None,) * 4), layers[s], layers[s + 1], dilated, layers[s + 2 + 2 * k], bn_s))


@functools.lru_cache(maxsize=256)
def _positions(spec: LayerSpec) -> tuple:
    """(where the BatchNorms are among ``spec``'s layers in run order, where the spatial branch
    starts, how many dilated layers it has): the layers in :class:`Parts`' order, positioned."""
    channel = ((1, 3) if spec.channel_bn else (1,)) if spec.mlp_hidden else ()
    s, k = (3 + spec.channel_bn if spec.mlp_hidden else 0), len(spec.dilated)
    spatial = (s + 1, *(s + 3 + 2 * i for i in range(k)), *((s + 3 + 2 * k,) if spec.spatial_bn else ()))
    return channel + (spatial if spec.hidden else ()), s, k


def _batch_norms(parts: Parts) -> tuple:
    """``parts``' BatchNorms in run order."""
    return tuple(m for m in run_order(parts) if isinstance(m, _BatchNorm))


# The layers whose gradients the kernels write into one buffer: Parts' fields before the spatial
# branch's first BatchNorm (the channel branch's and the reduce convolution's).
_IN_BUFFER = Parts._fields.index("bn_r")
_BATCH_STATS = operator.attrgetter("batch_stats")


def _mlp_bn(bn: _BatchNorm | None):
    """The channel-MLP kernels' BatchNormArgs of ``bn`` (None for None)."""
    from .kernels.channel_mlp import BatchNormArgs

    if bn is None:
        return None
    m = bn.mode
    return BatchNormArgs(
        bn.weight, bn.bias, bn.running_mean, bn.running_var, m.eps, m.momentum, m.batch_stats, m.update
    )


def _batch_update(bn: _BatchNorm | None) -> _BatchNorm | None:
    """``bn`` as its kernel or aten call runs: a cumulative average has it write the batch's mean
    and unbiased variance into zeros (momentum 1), for :func:`_cumulative_update` to apply."""
    if bn is None or not bn.mode.cumulative:
        return bn
    zeros = torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)
    return bn._replace(mode=bn.mode._replace(momentum=1.0), running_mean=zeros[0], running_var=zeros[1])


def _cumulative_update(bn: _BatchNorm | None, batch: _BatchNorm | None) -> None:
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


def _batch_norm(t, bn: _BatchNorm):
    """One spatial BatchNorm on t, as nn.BatchNorm runs it this call: ``(out, _SavedBN)``."""
    b = _batch_update(bn) if bn.mode.cumulative else bn
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        t, b.weight, b.bias, b.running_mean, b.running_var, b.mode.batch_stats, b.mode.momentum, b.mode.eps
    )
    if bn.mode.cumulative:
        _cumulative_update(bn, b)
    return out, _SavedBN(t, *((mean, invstd) if bn.mode.batch_stats else (None, None)))


def _batch_norm_backward(g, bn: _BatchNorm, saved: _SavedBN):
    """(∂L/∂input, ∂L/∂weight, ∂L/∂bias) of one BatchNorm (its running statistics, in eval mode,
    as the forward read them: :func:`_unflatten`'s ``frozen``)."""
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


class _Saved(NamedTuple):
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
    def unflat(call: FusedCall, tensors) -> "_Saved":
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
        return _Saved(mlp, p, bn_r, a_r, dilated, ms, bn_s, tuple(it))


def _forward(x: torch.Tensor, call: FusedCall, keep: bool):
    """``(y, _Saved or None)``: the module on x (N, C, H, W) in a kernel layout, autocast off;
    num_batches_tracked already counted."""
    from .kernels import gate_fwd
    from .kernels.channel_mlp import channel_mlp_fwd
    from .kernels.pool_reduce import pool_reduce

    parts, dt = _unflatten(call), call.branch_dtype
    pool_part, z0 = pool_reduce(x, *(parts.reduce or (None, None)), pool=parts.fc0 is not None, dot_dtype=dt)
    ms = p = mlp = bn_r = a_r = bn_s = None
    dilated = ()
    if parts.fc0 is not None:
        p = pool_part.sum(1)
        bn1, bnc = _batch_update(parts.bn1), _batch_update(parts.bn_c)
        mlp = channel_mlp_fwd(p, *parts.fc0, _mlp_bn(bn1), *parts.fc_final, _mlp_bn(bnc), dt)
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
        eval_mode = (bn for bn in _batch_norms(parts) if not bn.mode.batch_stats)
        frozen = tuple(t.clone() for bn in eval_mode for t in (bn.running_mean, bn.running_var))
    return y, _Saved(mlp, p, bn_r, a_r, dilated, ms, bn_s, frozen)


def _backward(g: torch.Tensor, x: torch.Tensor, call: FusedCall, saved: _Saved, params: tuple) -> tuple:
    """``(∂L/∂x, grad_buf, rest)``, first order, by the kernels and aten's backward calls; autocast
    off. ``rest`` holds the gradients of the last ``len(rest)`` parameters, ``grad_buf`` those of
    the others (the layers before :data:`_IN_BUFFER`), one after another (:func:`buffer_views`).
    ``call`` needs no running statistics or counts; ``params`` stand for its parameters."""
    from .common import compute_dtype
    from .kernels.channel_mlp import channel_mlp_bwd
    from .kernels.gate_bwd import bwd_plan, launch_gate_bwd_stage_one, launch_gate_bwd_stage_two
    from .kernels.input_grad import input_grad, input_grad_plan

    parts, dt = _unflatten(call, saved.frozen, params), call.branch_dtype
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

    buffered = [t for layer in parts[:_IN_BUFFER] if layer is not None for t in layer[:2]]
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
        bn1, bnc = _mlp_bn(parts.bn1), _mlp_bn(parts.bn_c)
        channel_mlp_bwd(gmc, saved.p, saved.mlp, parts.fc0[0], bn1, parts.fc_final[0], bnc, grad_buf, mlp_offsets)
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
    :func:`_backward` wrote there (autograd takes views of one buffer as they are)."""
    sizes = [p.numel() for p in params]
    return tuple(t if p.dim() == 1 else t.view(p.shape) for t, p in zip(grad_buf.split_with_sizes(sizes), params))


def _functional(x: torch.Tensor, call: FusedCall, saved: _Saved) -> torch.Tensor:
    """The module in differentiable PyTorch ops on the forward's statistics (the batch's, or the
    running ones as they were), updating nothing: what a create_graph backward differentiates."""
    import torch.nn.functional as F

    from . import reference

    parts = _unflatten(call, frozen=saved.frozen)

    def bn(t, b: _BatchNorm):
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


def differentiable_grads(g, x, call: FusedCall, saved: _Saved) -> tuple:
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
        y, saved = _forward(x, call, keep=True)
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
        gx, grad_buf, rest = _backward(g, x, ctx.call, ctx.branch_tensors, params)
        return gx, None, *buffer_views(grad_buf, params[: len(params) - len(rest)]), *rest


def fused_bam(x: torch.Tensor, call: FusedCall) -> torch.Tensor:
    """The module ``call`` was planned for (:func:`bam_fused.fused_path.check_fused_path`) on x
    (N, C, H, W), as one autograd node: (N, C, H, W) in x's dtype and memory format. Raises
    ``call.error`` (what eager BAM raises) before anything changes."""
    from .kernels.layout import as_kernel_layout

    if call.error is not None:
        raise call.error
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in call.params))
    if call.counts:  # as nn.BatchNorm counts its batches; one foreach call for all
        torch._foreach_add_(call.counts, 1)
    x = as_kernel_layout(x)
    with no_autocast(call, x.device.type):
        if keep:
            return _FusedBAMFunction.apply(x, call, *call.params)
        return _forward(x, call, keep=False)[0]


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


# The whole module as the custom op pair torch.compile traces: bam_fused::module (forward: y, the
# running statistics it updates, what the backward needs) and bam_fused::module_backward. An op
# with an autograd formula mutates none of its inputs, so the forward updates copies of the
# running statistics, which the caller copies back, and the caller counts the batches (as
# nn.BatchNorm does, before the cumulative averages read the counts). The ops take FusedCall's
# plain values as lists of ints, bools and floats.


def _implementation() -> str:
    """A digest of the code that lays out the ops' outputs (this file and the kernels' launchers).
    Inductor's caches key a compiled graph by its ops' names and arguments, not by what the ops
    compute: with the digest among the arguments, a changed implementation is never handed a
    graph compiled for another one (whose outputs it would misread)."""
    kernels = Path(importlib.util.find_spec("bam_fused.kernels").origin).parent
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(kernels.glob("*.py")):
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


def _forward_op_body(x, params, running, counts, args) -> list:
    call = op_call(*args, params, running, counts)
    updated = _updated(call)
    copies = [t.clone() if u else t for t, u in zip(running, updated)]
    with no_autocast(call, x.device.type):
        y, saved = _forward(x, call._replace(running=tuple(copies)), keep=True)
    return [y, *(t for t, u in zip(copies, updated) if u), *saved.flat()]


@torch.library.custom_op("bam_fused::module", mutates_args=())
def _module_op(
    x: torch.Tensor,
    params: list[torch.Tensor],
    running: list[torch.Tensor],
    counts: list[torch.Tensor],
    spec: list[int],
    bn_flags: list[bool],
    bn_scalars: list[float],
    combine: str,
    branch_dtype: torch.dtype,
    autocast: bool,
    implementation: str,
) -> list[torch.Tensor]:
    """The module's forward on x (N, C, H, W) in a kernel layout (FusedCall's tensors and values,
    :func:`op_args`; ``counts`` already incremented): [y, the running statistics it updates, as
    new tensors, in ``running``'s order, what the backward needs]."""
    return _forward_op_body(
        x, params, running, counts, (spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation)
    )


def _static(t: torch.Tensor) -> torch.Tensor:
    """t, or a tensor like it with integer sizes and strides (symbolic ones specialised): what the
    fake implementations run the launchers on, whose plans are cached by shape."""
    if all(type(v) is int for v in (*t.shape, *t.stride())):
        return t
    return t.new_empty_strided([int(v) for v in t.shape], [int(v) for v in t.stride()])


@_module_op.register_fake
def _(x, params, running, counts, spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation):
    from .kernels.layout import captured_launches

    tensors = (_static(x), *([_static(t) for t in ts] for ts in (params, running, counts)))
    with captured_launches():  # the launchers allocate their outputs; nothing is launched
        return _forward_op_body(*tensors, (spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation))


def _backward_op_body(g, x, params, saved, args) -> list:
    call = op_call(*args, params)
    with no_autocast(call, x.device.type):
        gx, grad_buf, rest = _backward(g, x, call, _Saved.unflat(call, saved), call.params)
    return [gx, grad_buf, *rest]


@torch.library.custom_op("bam_fused::module_backward", mutates_args=())
def _module_backward_op(
    g: torch.Tensor,
    x: torch.Tensor,
    params: list[torch.Tensor],
    saved: list[torch.Tensor],
    spec: list[int],
    bn_flags: list[bool],
    bn_scalars: list[float],
    combine: str,
    branch_dtype: torch.dtype,
    autocast: bool,
    implementation: str,
) -> list[torch.Tensor]:
    """The module's first-order backward: [∂L/∂x, the buffer holding the first parameters'
    gradients, the other parameters' gradients] (:func:`_backward`)."""
    return _backward_op_body(
        g, x, params, saved, (spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation)
    )


@_module_backward_op.register_fake
def _(g, x, params, saved, spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation):
    from .kernels.layout import captured_launches

    tensors = (_static(g), _static(x), *([_static(t) for t in ts] for ts in (params, saved)))
    with captured_launches():
        return _backward_op_body(
            *tensors, (spec, bn_flags, bn_scalars, combine, branch_dtype, autocast, implementation)
        )


def _setup_context(ctx, inputs, output):
    x, params, running, counts, *args = inputs
    ctx.args = args
    ctx.params = len(params)
    ctx.buffers = len(running), len(counts)
    updated = sum(_updated(op_call(*args)))
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(x, *params, *output[1 + updated :])


def _module_op_backward(ctx, grads):
    x, *tensors = ctx.saved_tensors
    params, saved = tensors[: ctx.params], tensors[ctx.params :]
    call = op_call(*ctx.args, params)
    if torch.is_grad_enabled():  # create_graph: second order stays exact
        gx, *param_grads = differentiable_grads(grads[0], x, call, _Saved.unflat(call, saved))
    else:
        gx, grad_buf, *rest = _module_backward_op(grads[0], x, params, saved, *ctx.args)
        param_grads = [*buffer_views(grad_buf, params[: len(params) - len(rest)]), *rest]
    running, counts = ([None] * n for n in ctx.buffers)
    return gx, list(param_grads), running, counts, *(None,) * len(ctx.args)


_module_op.register_autograd(_module_op_backward, setup_context=_setup_context)


def fused_bam_op(x: torch.Tensor, call: FusedCall) -> torch.Tensor:
    """:func:`fused_bam` through the ``bam_fused::module`` op (what torch.compile traces; the op
    costs more host time than the Function in eager calls)."""
    from .kernels.layout import as_kernel_layout

    if call.error is not None:
        raise call.error
    if call.counts:  # as nn.BatchNorm counts its batches
        torch._foreach_add_(list(call.counts), 1)
    y, *rest = _module_op(as_kernel_layout(x), list(call.params), list(call.running), list(call.counts), *op_args(call))
    updated = [t for t, u in zip(call.running, _updated(call)) if u]
    if updated:
        torch._foreach_copy_(updated, rest[: len(updated)])
    return y
