"""What one call of the fused path computes, without the module: plain values and tensors.

:class:`FusedCall` is the whole description of a call — :class:`LayerSpec` (the layers and their
options), one :class:`~bam_fused.kernels.utils.BatchNormMode` per BatchNorm, the combine, the
branches' dtype, and the tensors in one order: each layer's (weight, bias) in :class:`Parts`'
field order, the running statistics the call hands over, the batch counts.
:func:`bam_fused.fused_path.check_fused_path` builds it from a FusedBAM;
:mod:`bam_fused.fused_bam` computes it; :mod:`bam_fused.fused_op` passes it through torch.compile
as plain values (:meth:`LayerSpec.to_ints`). :func:`unflatten` gives the same tensors by role
(:class:`Parts`, a :class:`~bam_fused.kernels.utils.BatchNorm` record per BatchNorm: the one
record the kernels and aten's calls read), and everything ordered — the parameters, the
gradients the backward returns, the kernels' gradient buffer (:data:`IN_BUFFER`) — follows
:class:`Parts`' field order (:func:`run_order`).
"""

import functools
import itertools
from typing import NamedTuple

import torch

from .kernels.utils import BatchNorm


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


class Parts(NamedTuple):
    """A call's layers by role, in the order they run: (weight, bias) pairs, BatchNorm records,
    ``dilated`` a (convolution pair, BatchNorm, (padding, dilation)) per dilated layer; None
    where absent. The same roles hold gradients in the backward."""

    fc0: tuple | None
    bn1: BatchNorm | None
    fc_final: tuple | None
    bn_c: BatchNorm | None
    reduce: tuple | None
    bn_r: BatchNorm | None
    dilated: tuple
    conv_final: tuple | None
    bn_s: BatchNorm | None


def run_order(parts: Parts) -> tuple:
    """``parts``' layers (anything held per layer: modules, gradient pairs) in the order they run,
    absent ones left out; a dilated layer's first two entries (convolution, BatchNorm) in turn."""
    dilated = itertools.chain.from_iterable(d[:2] for d in parts.dilated)
    return tuple(m for m in (*parts[:6], *dilated, *parts[7:]) if m is not None)


def unflatten(call: FusedCall, frozen=None, params=None) -> Parts:
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
            layers[i] = new(BatchNorm, (weight, bias, mode, next(running), next(running), count))
        else:
            layers[i] = new(BatchNorm, (weight, bias, mode, None, None, count))
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


def batch_norms(parts: Parts) -> tuple:
    """``parts``' BatchNorms in run order."""
    return tuple(m for m in run_order(parts) if isinstance(m, BatchNorm))


# The layers whose gradients the kernels write into one buffer: Parts' fields before the spatial
# branch's first BatchNorm (the channel branch's and the reduce convolution's).
IN_BUFFER = Parts._fields.index("bn_r")
