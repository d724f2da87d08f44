"""Whether a FusedBAM call takes the fused path, and exactly what that path will compute.

The fused path (:mod:`bam_fused.fused_bam`) computes one module and nothing else:

    channel_att  ChannelGate: gate_c = Sequential([Flatten(1, -1),] Linear(C, h), BatchNorm1d(h), ReLU,
                                                  Linear(h, C)[, BatchNorm1d(C)])
    spatial_att  SpatialGate: gate_s = Sequential(Conv2d(C, h, 1), BatchNorm2d(h), ReLU,
                                                  k × [Conv2d(h, h, dilated, size-keeping), BatchNorm2d(h), ReLU],
                                                  Conv2d(h, 1, 1)[, BatchNorm2d(1)])

either branch may be absent (not both), and k ≥ 0. Every layer is of that exact type (no
subclass, no SyncBatchNorm), every convolution has stride 1, one group, zero padding (1×1) or the
padding that keeps the map's size, every layer has its weight and bias (affine BatchNorms), no
module or tensor sits in two places, all parameters and buffers share one dtype and one device,
and the tensors the kernels index (the channel branch's, the reduce convolution's) are
contiguous. Anything else runs the per-op path, where BAM's own forward computes whatever the
module is; :func:`fused_path_blocker` names the reason.

**Checked once, re-checked cheaply.** Walking and checking the module costs ~100 µs, a call
must not. The result is cached per module with what can change it since:

- any module anywhere registering a submodule, parameter or buffer (global registration hooks
  bump one counter: ``setattr``, ``add_module``, ``register_buffer``, a parametrization);
- the size of every ``_modules`` / ``_parameters`` / ``_buffers`` / ``__dict__`` in the module's
  tree (deletions, and attributes such as an instance's own ``forward``);
- its hook dictionaries (a hook on any submodule);
- the identity and data pointer of every parameter and buffer (``torch.func.functional_call``
  swaps dictionary entries without registering; ``.to()`` and ``.data =`` swap storage) and the
  strides of the tensors the kernels index;
- the convolutions' and the Flatten's options (plain attributes).

Per call the rest is read fresh: x's dtype against the parameters' and autocast's, x's device,
the batch and map size against every BatchNorm and the one-program kernels' bounds, and each
BatchNorm's mode (``training``, ``momentum``, ``eps``, ``track_running_stats``). An error eager
BAM would raise for the call (one value per channel in training, a non-positive ``eps``) comes
back as :attr:`FusedCall.error`, found before anything has changed: FusedBAM raises it with no
buffer, counter or statistic touched.

**Under torch.compile** nothing is cached here: :func:`traced_fused_call` makes the same checks
while dynamo traces FusedBAM's forward, and the compiled code guards on everything they read.
Checks the trace could not follow are written so that it can, and so that it guards them: hook
dicts are read through ``vars()`` and counted, an instance's own ``forward`` is compared as a
bound method, the global hooks are counted. The checks that no layer or tensor sits in two
places compare identities, which the compiled code guards by identity: each FusedBAM instance
compiled by itself gets a graph of its own, and counts against dynamo's recompile limit (8 by
default; past it, fullgraph=True raises, otherwise the instance runs eagerly). In a compiled
network each FusedBAM is traced once anyway.
"""

import functools
import itertools
import operator
import weakref
from typing import NamedTuple

import torch
from torch import nn

from .branches import ChannelGate, SpatialGate
from .common import FLOAT_DTYPES, compute_dtype
from .fused_bam import step_on_meta
from .fused_call import FusedCall, LayerSpec, Parts, run_order
from .fused_op import op_args, op_call
from .kernels.channel_mlp import mlp_fits
from .kernels.input_grad import input_grad_fits
from .kernels.pool_reduce import pool_reduce_fits
from .kernels.target import target_of
from .kernels.utils import BatchNormMode
from .ops import transformed, triton_can_run
from .preflight import kernels_unavailable

_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# Plain tensors only: the kernels read memory, not a subclass's (FakeTensor, DTensor, …) view of it.
_PLAIN = (torch.Tensor, nn.Parameter)
_WEIGHT_BIAS_KEYS = ("weight", "bias")
_BN_BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
_WEIGHT_BIAS = operator.itemgetter(*_WEIGHT_BIAS_KEYS)
_BN_BUFFERS = operator.itemgetter(*_BN_BUFFER_KEYS)
_CONV_OPTIONS = operator.attrgetter("padding", "dilation", "stride", "groups", "padding_mode")
_FLATTEN_OPTIONS = operator.attrgetter("start_dim", "end_dim")

# Bumped whenever any module registers a submodule, parameter or buffer: every cached check is
# then redone once (rare in a training loop, which registers nothing).
_registrations = 0


def _registered(*_):
    global _registrations
    _registrations += 1


nn.modules.module.register_module_module_registration_hook(_registered)
nn.modules.module.register_module_parameter_registration_hook(_registered)
nn.modules.module.register_module_buffer_registration_hook(_registered)


class DilatedLayer(NamedTuple):
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    padding: tuple[int, int] | None  # as integers ('same' resolved); None where not symmetric


class Structure(NamedTuple):
    """A module as the fused path computes it. Absent branches' layers are None."""

    fc0: nn.Linear | None
    bn1: nn.BatchNorm1d | None
    fc_final: nn.Linear | None
    bn_c: nn.BatchNorm1d | None  # the paper variant's final BN
    reduce: nn.Conv2d | None
    bn_r: nn.BatchNorm2d | None
    dilated: tuple[DilatedLayer, ...]
    conv_final: nn.Conv2d | None
    bn_s: nn.BatchNorm2d | None  # the paper variant's final BN
    layers: tuple[nn.Module, ...]  # every parametrised layer in the order it runs: FusedCall.params' order
    bns: tuple[nn.modules.batchnorm._BatchNorm, ...]  # the BatchNorms in the order they run
    dtype: torch.dtype  # of every parameter and floating buffer
    device: torch.device
    spec: LayerSpec | None  # the same, without the modules: what the kernels and aten calls are planned from
    kernel_key: tuple | None  # what the kernels' specialisations depend on (channels, widths, the layers present)

    @property
    def hidden(self) -> int:
        """h of the spatial branch (0 without it): the reduce convolution's output channels."""
        return self.reduce.out_channels if self.reduce is not None else 0


class _Check:
    """A module's structure check, with what it must be redone for (see the module docstring), and
    its BatchNorms' last plan (reused while their modes stay and the batch has more than one sample)."""

    __slots__ = (
        "registrations", "modules_dicts", "dicts", "sizes", "hook_dicts", "hooked", "result",
        "param_dicts", "buffer_dicts", "floating", "data_ptrs", "kernel_read", "convs", "conv_options",
        "flattens", "flatten_options", "bn_state", "bn_plan",
    )  # fmt: skip

    def __init__(self, module: nn.Module):
        tree = self._check(module)
        self.registrations = _registrations
        # Deletions show in the containers' _modules and anyone's __dict__ (an instance's own
        # forward, too); additions anywhere bump the registration counter.
        self.dicts = tuple(m._modules for m in tree if m._modules) + tuple(m.__dict__ for m in tree)
        self.sizes = tuple(map(len, self.dicts))
        self.bn_state = self.bn_plan = None
        tensors = self.read_tensors()
        self.data_ptrs = self.conv_options = self.flatten_options = None
        if tensors is not None:
            self.data_ptrs = _data_ptrs(tensors[0] + tensors[1], self.floating)
        self.conv_options = tuple(map(_CONV_OPTIONS, self.convs))
        self.flatten_options = tuple(map(_FLATTEN_OPTIONS, self.flattens))

    def _check(self, module: nn.Module) -> list:
        """Check ``module``'s structure into ``result``, noting what the answer depends on; returns
        the module's tree."""
        tree = _tree(module)
        # Read through vars(): torch.compile guards on the hook dicts a trace reads this way (not
        # on those read as a module's attributes), so a hook added later recompiles.
        self.hook_dicts = tuple(vars(m)[name] for m in tree[1:] for name in _HOOKS)
        self.hooked = any(map(len, self.hook_dicts))
        self.param_dicts = self.buffer_dicts = self.convs = self.flattens = ()
        self.floating = self.kernel_read = ()
        self.result = _structure(module, tree, self)
        return tree

    def read_tensors(self) -> "tuple[tuple, tuple] | None":
        """(the parameters in Structure.layers' order, each BatchNorm's (running_mean, running_var,
        num_batches_tracked) flattened), as the module holds them now; None where one went missing."""
        try:
            params = tuple(itertools.chain.from_iterable(map(_WEIGHT_BIAS, self.param_dicts)))
            buffers = tuple(itertools.chain.from_iterable(map(_BN_BUFFERS, self.buffer_dicts)))
        except KeyError:
            return None
        return params, buffers

    def batch_norm_plan(self, buffers: tuple, N: int, H: int, W: int) -> "tuple | str":
        """:func:`_batch_norm_plan` of the structure's BatchNorms, reused while it holds."""
        return _batch_norm_plan(self, self.result.bns, buffers, N, H, W)

    def current_tensors(self) -> "tuple[tuple, tuple] | None":
        """:meth:`read_tensors` when this check still holds for the module, else None."""
        if (
            self.registrations != _registrations
            or tuple(map(len, self.dicts)) != self.sizes
            or any(self.hook_dicts) != self.hooked
        ):
            return None
        tensors = self.read_tensors()
        if (
            tensors is None
            or _data_ptrs(tensors[0] + tensors[1], self.floating) != self.data_ptrs
            or not all(map(torch.Tensor.is_contiguous, itertools.compress(tensors[0] + tensors[1], self.kernel_read)))
            or tuple(map(_CONV_OPTIONS, self.convs)) != self.conv_options
            or tuple(map(_FLATTEN_OPTIONS, self.flattens)) != self.flatten_options
        ):
            return None
        return tensors


class _TracedCheck(_Check):
    """The structure check as torch.compile traces it: done afresh at each trace, nothing cached,
    since the compiled code's guards are on everything the trace read."""

    __slots__ = ()

    def __init__(self, module: nn.Module):
        self._check(module)

    def read_tensors(self) -> "tuple[tuple, tuple] | None":
        # The same as _Check's, in calls the trace can follow (not itemgetter's).
        try:
            params = tuple(d[k] for d in self.param_dicts for k in _WEIGHT_BIAS_KEYS)
            buffers = tuple(d[k] for d in self.buffer_dicts for k in _BN_BUFFER_KEYS)
        except KeyError:
            return None
        return params, buffers

    def batch_norm_plan(self, buffers: tuple, N: int, H: int, W: int) -> "tuple | str":
        return _batch_norm_calls(self.result.bns, buffers, N, H, W)


def _data_ptrs(tensors: tuple, floating: tuple) -> "tuple | None":
    """The data pointers of the tensors ``floating`` marks (a swapped storage: ``.to()`` on a
    submodule, ``.data =``), or None where one is not a plain tensor."""
    try:
        return tuple(map(torch.Tensor.data_ptr, itertools.compress(tensors, floating)))
    except (TypeError, RuntimeError):
        return None


_checks: "weakref.WeakKeyDictionary[nn.Module, _Check]" = weakref.WeakKeyDictionary()


def fused_path_blocker(module, x: torch.Tensor) -> str | None:
    """Why ``module`` (a FusedBAM) runs the per-op path on x (N, C, H, W), or None when it runs its
    fused path (which may then raise what eager BAM raises for the call)."""
    checked = check_fused_path(module, x)
    return checked if isinstance(checked, str) else None


def check_fused_path(module, x: torch.Tensor) -> "FusedCall | str":
    """The fused path's plan for ``module`` (a FusedBAM) on x (N, C, H, W), or why the per-op path
    must run. Changes nothing; x's channel count is already checked. The first call of each
    configuration compiles and loads its kernels for x's device (:mod:`bam_fused.preflight`): one
    that cannot run there sends the configuration the per-op way, with a warning, or raises under
    ``backend="triton"``."""
    planned = _call_blocker(module, x) or _plan(module, x)
    if isinstance(planned, str) or planned[0].error is not None:
        return planned if isinstance(planned, str) else planned[0]
    call, kernel_key, kernel_modes = planned
    key = (x.device, x.shape, x.stride(), x.dtype, call.branch_dtype, call.combine, kernel_key, kernel_modes)
    fallback = None if module.gate_backend == "triton" else "FusedBAM runs the per-op path"
    return kernels_unavailable(key, lambda: step_on_meta(x, call), x, fallback) or call


def plan_fused_call(module, x: torch.Tensor) -> "FusedCall | str":
    """:func:`check_fused_path` without the checks of where and how the call runs (the kernels'
    device, tracers, transforms, global hooks): what the kernels would be launched with, also on
    meta tensors (``python -m benchmarks.ptx_report`` compiles them so)."""
    planned = _plan(module, x)
    return planned if isinstance(planned, str) else planned[0]


def _plan(module, x: torch.Tensor, check: "_Check | None" = None) -> "tuple[FusedCall, tuple, tuple] | str":
    """(:func:`plan_fused_call`, what else the kernels specialise on: the layers' widths and
    presence, each BatchNorm's (batch_stats, update)). ``check``: the traced check (None: the
    module's cached one, redone where it no longer holds)."""
    if check is None:
        check = _checks.get(module)
        tensors = check.current_tensors() if check is not None else None
        if tensors is None:
            check = _checks[module] = _Check(module)
            tensors = check.current_tensors()
    else:
        tensors = check.read_tensors()
    s = check.result
    if isinstance(s, str):
        return s
    if tensors is None:  # (a tensor the check accepted cannot be read back: not expected)
        return "the module's tensors changed while it was checked"
    if x.device != s.device:
        return f"x is on {x.device}, the module on {s.device}"
    dtypes = _branch_dtype(x.dtype, s.dtype, x.device.type)
    if isinstance(dtypes, str):
        return dtypes
    N, _, H, W = x.shape
    mlp_hidden = s.fc0.out_features if s.fc0 is not None else 0
    too_big = _kernels_blocker(mlp_hidden, s.hidden, N, x.dtype, dtypes[0], target_of(x.device))
    if too_big is not None:
        return too_big
    params, buffers = tensors
    plan = check.batch_norm_plan(buffers, N, H, W)
    if isinstance(plan, str):
        return plan
    modes, running, counts, error, kernel_modes = plan
    return FusedCall(s.spec, modes, module.combine, *dtypes, params, running, counts, error), s.kernel_key, kernel_modes


@functools.lru_cache(maxsize=256)
def _kernels_blocker(
    mlp_hidden: int, reduce_hidden: int, N: int, x_dtype: torch.dtype, branch_dtype: torch.dtype, target
) -> str | None:
    """Why a program of the kernels cannot hold this call on ``target`` (None when they all can):
    the channel branch's one program a batch of N at width ``mlp_hidden``, pool_reduce and
    input_grad a reduce convolution to ``reduce_hidden`` channels (0: the branch is absent)."""
    reasons = []
    if mlp_hidden:
        reasons.append(mlp_fits(N, mlp_hidden, branch_dtype, compute_dtype(x_dtype), target))
    if reduce_hidden:
        reasons += [
            pool_reduce_fits(reduce_hidden, x_dtype, branch_dtype, target),
            input_grad_fits(reduce_hidden, x_dtype, branch_dtype, target),
        ]
    return next((r for r in reasons if r is not None), None)


def traced_fused_call(module, x: torch.Tensor) -> "FusedCall | str":
    """:func:`check_fused_path` as ``torch.compile`` traces it (FusedBAM.forward while compiling):
    the same checks of the structure and of the call, made afresh at each trace. The compiled code
    guards on everything they read (the layers' types and options, hook dicts, the tensors' dtypes,
    shapes and strides, each BatchNorm's mode, autocast), so a module changed after compiling is
    checked again, and runs whichever path the check then picks. x's sizes become static (the
    launch plans take integers: a new batch or map size recompiles), so whether the kernels load
    on the device is found as :func:`check_fused_path` finds it, while tracing."""
    from torch._dynamo.comptime import comptime

    for size in x.shape:
        comptime.force_static(size)
    planned = _call_blocker(module, x, traced=True) or _plan(module, x, _TracedCheck(module))
    if isinstance(planned, str) or planned[0].error is not None:
        return planned if isinstance(planned, str) else planned[0]
    call, kernel_key, kernel_modes = planned
    tensors = [
        [(tuple(t.shape), t.stride(), t.dtype) for t in ts] for ts in ((x,), call.params, call.running, call.counts)
    ]
    args = (kernel_key, kernel_modes, module.gate_backend, op_args(call))
    return _kernels_unavailable_traced(x.device, tensors, *args) or call


@torch._dynamo.assume_constant_result
def _kernels_unavailable_traced(device, tensors, kernel_key, kernel_modes, backend, args) -> str | None:
    """:func:`check_fused_path`'s pre-flight (:mod:`bam_fused.preflight`) for a traced call, from
    plain values (x's and the call's tensors as (shape, strides, dtype); the call's values as its
    ops take them): torch.compile runs it while tracing and keeps the answer, which depends only on
    what the compiled code guards."""
    (x,), params, running, counts = (
        [torch.empty_strided(shape, strides, dtype=dtype, device="meta") for shape, strides, dtype in ts]
        for ts in tensors
    )
    call = op_call(*args, params, running, counts)
    key = (device, x.shape, x.stride(), x.dtype, call.branch_dtype, call.combine, kernel_key, kernel_modes)
    fallback = None if backend == "triton" else "FusedBAM runs the per-op path"
    return kernels_unavailable(key, lambda: step_on_meta(x, call), x, fallback, device)


def _call_blocker(module, x: torch.Tensor, traced: bool = False) -> str | None:
    """Reasons that do not depend on the module's structure (``traced``: as torch.compile traces them)."""
    if module.gate_backend == "reference":
        return "backend='reference'"
    if not triton_can_run(x):
        return f"the kernels cannot run on {x.device} tensors here"
    if torch.jit.is_tracing():
        return "torch.jit.trace records aten ops"
    if type(x) not in _PLAIN:
        return f"x is a {type(x).__name__}, which the kernels cannot read"
    if x.dtype not in FLOAT_DTYPES:
        return f"x is {x.dtype}"
    if transformed():
        return "forward-mode AD and torch.func transforms need the per-op path"
    N, _, H, W = x.shape
    if N == 0 or H * W == 0:
        return "an empty batch or map"
    if traced:  # counted: torch.compile guards the count, not the truth value
        hooked = any(len(getattr(nn.modules.module, name)) for name in _GLOBAL_HOOKS)
    else:
        hooked = any(getattr(nn.modules.module, name) for name in _GLOBAL_HOOKS)
    if hooked:
        return "global module hooks are registered"
    return None


def _branch_dtype(x_dtype, dtype, device_type: str) -> "tuple[torch.dtype, bool] | str":
    """(the branches' dtype, whether autocast runs them) for x of ``x_dtype`` and parameters of
    ``dtype``, or why eager BAM would compute something else (it raises, or converts otherwise)."""
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast and x_dtype != torch.float64:  # autocast leaves float64 alone
        lower = torch.get_autocast_dtype(device_type)
        if dtype != torch.float32:
            return f"under {lower} autocast the fused path takes float32 parameters, not {dtype}"
        if x_dtype not in (torch.float32, lower):
            return f"x is {x_dtype} under {lower} autocast"
        return lower, True
    if x_dtype != dtype:
        return f"x is {x_dtype}, the parameters are {dtype}"
    return x_dtype, False


_BN_STATE = operator.attrgetter("training", "track_running_stats", "eps", "momentum")


def _batch_norm_plan(check: _Check, bns, buffers, N: int, H: int, W: int) -> "tuple | str":
    """(each BatchNorm's BatchNormMode, the running statistics and the num_batches_tracked buffers
    the call hands over (:class:`FusedCall`'s), the error eager BAM raises or None, each one's
    (batch_stats, update)) for the BatchNorms ``bns`` in the order they run, with ``buffers``
    their (running_mean, running_var, num_batches_tracked) flattened; or why the per-op path runs.
    Reused from ``check`` while every mode stays and N > 1 (only one sample can meet the
    one-value error)."""
    state = tuple(map(_BN_STATE, bns))
    if N > 1 and state == check.bn_state:
        return check.bn_plan
    plan = _batch_norm_calls(bns, buffers, N, H, W)
    check.bn_state, check.bn_plan = (state, plan) if N > 1 and not isinstance(plan, str) else (None, None)
    return plan


def _batch_norm_calls(bns, buffers, N: int, H: int, W: int) -> "tuple | str":
    """:func:`_batch_norm_plan`, computed: each BatchNorm's mode as ``nn.BatchNorm.forward`` decides
    it, or the error the first of them to fail raises in eager BAM, with eager's message."""
    modes, running, counts = [], [], []
    trios = zip(buffers[0::3], buffers[1::3], buffers[2::3])
    for bn, (rm, rv, nbt) in zip(bns, trios):
        if (rm is None) != (rv is None):
            return f"{type(bn).__name__}({bn.num_features}) has one running statistic but not the other"
        training, tracked, eps = bn.training, bn.track_running_stats, bn.eps
        batch_stats = training or rm is None
        size = torch.Size((N, bn.num_features, H, W) if isinstance(bn, nn.BatchNorm2d) else (N, bn.num_features))
        error = None
        if batch_stats and size.numel() // bn.num_features == 1:
            error = ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
        elif batch_stats and eps <= 0.0:
            error = ValueError(f"batch_norm eps must be positive during training, but got {eps}")
        elif eps < 0.0:
            error = ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if error is not None:
            return (), (), (), error, ()
        update = training and tracked and rm is not None
        # momentum=None with a counter: the cumulative average, 1 / (batches counted, this one included)
        cumulative = update and bn.momentum is None and nbt is not None
        momentum = bn.momentum if update and bn.momentum is not None else 0.0
        counted = training and tracked and nbt is not None
        passed = (not training or tracked) and rm is not None  # nn.BatchNorm hands F.batch_norm its buffers only then
        modes.append(BatchNormMode(batch_stats, update, cumulative, momentum, eps, passed, counted))
        running += (rm, rv) if passed else ()
        counts += (nbt,) if counted else ()
    return tuple(modes), tuple(running), tuple(counts), None, tuple((m.batch_stats, m.update) for m in modes)


def _tree(module: nn.Module) -> list[nn.Module]:
    """module and every module under it (a module registered twice, twice)."""
    out, stack = [], [module]
    while stack:
        m = stack.pop()
        if m is not None:
            out.append(m)
            stack.extend(m._modules.values())
    return out


def _structure(module, tree: list, check: _Check) -> "Structure | str":
    """module's Structure, or why the fused path does not compute it; fills in ``check`` what the
    answer depends on beyond the tree's dictionaries (the layers' tensors, options)."""
    if check.hooked:
        name = next(n for n, m in module.named_modules(remove_duplicate=False) if m is not module and _has_hooks(m))
        return f"a hook is registered on {name}"
    if "attention_maps" in module.overridden_bam_methods():
        return f"{type(module).__name__} overrides attention_maps, which the fused path would not run"
    for m in tree:
        # Compared as a bound method (not looked up in __dict__): torch.compile guards on it.
        if m.forward != type(m).forward.__get__(m):
            return f"a {type(m).__name__} in the module has its own forward attribute"
    channel = _channel_layers(module.channel_att) if module.channel_att is not None else ()
    spatial = _spatial_layers(module.spatial_att) if module.spatial_att is not None else ()
    for got in (channel, spatial):
        if isinstance(got, str):
            return got
    if not channel and not spatial:
        return "the module has neither branch"
    fc0, bn1, fc_final, bn_c, check.flattens = channel or (None, None, None, None, ())
    reduce, bn_r, dilated, conv_final, bn_s = spatial or (None, None, (), None, None)
    layers = run_order(Parts(fc0, bn1, fc_final, bn_c, reduce, bn_r, dilated, conv_final, bn_s))
    bns = tuple(m for m in layers if isinstance(m, nn.modules.batchnorm._BatchNorm))
    check.convs = tuple(m for m in layers if isinstance(m, nn.Conv2d))
    check.param_dicts = tuple(m._parameters for m in layers)
    check.buffer_dicts = tuple(m._buffers for m in bns)
    s = Structure(
        fc0, bn1, fc_final, bn_c, reduce, bn_r, dilated, conv_final, bn_s, layers, bns, None, None, None, None
    )
    tensors = check.read_tensors()
    if tensors is None:
        return "a layer's weight or bias, or a BatchNorm's buffer, is not registered"
    params, buffers = tensors
    kernel_layers = {fc0, bn1, fc_final, bn_c, reduce}
    in_kernels = [m in kernel_layers for m in layers for _ in "wb"] + [m in kernel_layers for m in bns for _ in "mvn"]
    check.kernel_read = tuple(k and t is not None for k, t in zip(in_kernels, params + buffers))
    check.floating = tuple(t is not None and t.is_floating_point() for t in params + buffers)
    got = _tensor_reason(s, module.gate_channel, params, buffers, check.kernel_read)
    if isinstance(got, str):
        return got
    spec = LayerSpec(
        module.gate_channel,
        fc0.out_features if fc0 is not None else 0,
        bn_c is not None,
        s.hidden,
        tuple((d.padding, d.conv.dilation) for d in dilated),
        bn_s is not None,
    )
    kernel_key = (spec.channels, spec.mlp_hidden, spec.hidden, spec.channel_bn, len(spec.dilated), spec.spatial_bn)
    return s._replace(dtype=got[0], device=got[1], spec=spec, kernel_key=kernel_key)


def _has_hooks(m: nn.Module) -> bool:
    return any(getattr(m, name) for name in _HOOKS)


def _next_layer(items: list, pos: int, cls, role: str, path: str) -> "nn.Module | str":
    """items[pos] (a (name, module) pair of a Sequential at ``path``) when it is exactly ``cls``."""
    if pos >= len(items):
        return f"{path} ends where the fused path computes {role} ({cls.__name__})"
    name, m = items[pos]
    if type(m) is not cls:
        return f"{path}.{name} is a {type(m).__name__} where the fused path computes {role} ({cls.__name__})"
    return m


def _sequential(att, gate_cls, name: str, path: str) -> "list | str":
    """The (name, module) items of ``att``'s one Sequential ``name``, when att is exactly ``gate_cls``."""
    if type(att) is not gate_cls:
        return f"{path} is a {type(att).__name__}, not the {gate_cls.__name__} the fused path computes"
    seq = att._modules.get(name)
    if len(att._modules) != 1 or type(seq) is not nn.Sequential:
        return f"{path} is not one Sequential {name}"
    return list(seq._modules.items())


def _channel_layers(att) -> "tuple | str":
    """(fc0, bn1, fc_final, bn_c or None, flattens) of a channel branch, or why it is not the fused one."""
    path = "channel_att.gate_c"
    items = _sequential(att, ChannelGate, "gate_c", "channel_att")
    if isinstance(items, str):
        return items
    flattens = ()
    if items and type(items[0][1]) is nn.Flatten:
        flattens = (items[0][1],)
        flatten = items[0][1]
        if (flatten.start_dim, flatten.end_dim) not in ((1, -1), (1, 1)):
            return f"{path}.{items[0][0]} flattens other dimensions than the channels"
    pos = len(flattens)
    got = []
    for cls, role in ((nn.Linear, "the first Linear"), (nn.BatchNorm1d, "its BatchNorm"), (nn.ReLU, "ReLU")):
        got.append(_next_layer(items, pos, cls, role, path))
        pos += 1
    got.append(_next_layer(items, pos, nn.Linear, "the final Linear", path))
    pos += 1
    bn_c = None
    if pos < len(items):
        bn_c = _next_layer(items, pos, nn.BatchNorm1d, "the final BatchNorm", path)
        pos += 1
    for m in (*got, bn_c):
        if isinstance(m, str):
            return m
    if pos < len(items):
        return f"{path}.{items[pos][0]} follows the layers the fused path computes"
    fc0, bn1, _, fc_final = got
    return fc0, bn1, fc_final, bn_c, flattens


def _spatial_layers(att) -> "tuple | str":
    """(reduce, bn_r, dilated, conv_final, bn_s or None) of a spatial branch, or why it is not the fused one."""
    path = "spatial_att.gate_s"
    items = _sequential(att, SpatialGate, "gate_s", "spatial_att")
    if isinstance(items, str):
        return items
    types = [type(m) for _, m in items]
    head = [_next_layer(items, i, cls, role, path) for i, (cls, role) in enumerate(_REDUCE_LAYERS)]
    pos = len(head)
    dilated = []
    while types[pos : pos + 3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and pos + 3 < len(items):
        conv, bn = items[pos][1], items[pos + 1][1]
        dilated.append(DilatedLayer(conv, bn, _padding(conv)))
        pos += 3
    conv_final = _next_layer(items, pos, nn.Conv2d, "the final 1×1 convolution", path)
    pos += 1
    bn_s = None
    if pos < len(items):
        bn_s = _next_layer(items, pos, nn.BatchNorm2d, "the final BatchNorm", path)
        pos += 1
    for m in (*head, conv_final, bn_s):
        if isinstance(m, str):
            return m
    if pos < len(items):
        return f"{path}.{items[pos][0]} follows the layers the fused path computes"
    return head[0], head[1], tuple(dilated), conv_final, bn_s


_REDUCE_LAYERS = ((nn.Conv2d, "the 1×1 reduce convolution"), (nn.BatchNorm2d, "its BatchNorm"), (nn.ReLU, "ReLU"))


def _padding(conv: nn.Conv2d) -> "tuple[int, int] | None":
    """conv's padding as two integers, or None where it is not symmetric ('same' with an odd total)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


def _tensor_reason(
    s: Structure, C: int, params: tuple, buffers: tuple, check_kernel_read: tuple
) -> "tuple[torch.dtype, torch.device] | str":
    """(the dtype, the device) of every parameter and buffer of ``s`` for a module of C channels
    (``buffers``: each BatchNorm's running_mean, running_var, num_batches_tracked, flattened;
    ``check_kernel_read``: a mask over ``params + buffers``, the tensors the kernels index),
    or why the fused path would compute something else: the layers' options and shapes, tensors
    present once each, plain, of one floating dtype and one device, contiguous where the kernels
    index them."""
    for conv, one_by_one in _convs(s):
        if conv.stride != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
            return f"a convolution has stride {conv.stride}, groups {conv.groups}, padding mode {conv.padding_mode!r}"
        pad = _padding(conv)
        if one_by_one and (conv.kernel_size != (1, 1) or pad != (0, 0)):
            return f"a 1×1 convolution of the fused path has kernel {conv.kernel_size}, padding {conv.padding}"
        if not one_by_one and (
            pad is None or any(2 * p != d * (k - 1) for p, d, k in zip(pad, conv.dilation, conv.kernel_size))
        ):
            return f"a dilated convolution's padding {conv.padding} does not keep the map's size"
    h = s.hidden
    hc = s.fc0.out_features if s.fc0 is not None else 0
    shapes = {
        s.fc0: ((hc, C), (hc,)),
        s.fc_final: ((C, hc), (C,)),
        s.reduce: ((h, C, 1, 1), (h,)),
        s.conv_final: ((1, h, 1, 1), (1,)),
        **{d.conv: ((h, h, *d.conv.kernel_size), (h,)) for d in s.dilated},
        **{bn: ((n,), (n,)) for bn, n in zip((s.bn1, s.bn_c, s.bn_r, s.bn_s), (hc, C, h, 1))},
        **{d.bn: ((h,), (h,)) for d in s.dilated},
    }
    if len(set(map(id, s.layers))) != len(s.layers):
        return "a layer is used in two places"
    for (m, (w, b)), (w_shape, b_shape) in zip(
        zip(s.layers, zip(params[::2], params[1::2])), map(shapes.get, s.layers)
    ):
        if w is None or b is None:
            return f"a {type(m).__name__} has no weight or bias"
        if w.shape != w_shape or b.shape != b_shape:
            return (
                f"a {type(m).__name__}'s weight {tuple(w.shape)} and bias {tuple(b.shape)} are not {w_shape}, {b_shape}"
            )
    for bn, rm, rv, nbt in zip(s.bns, buffers[0::3], buffers[1::3], buffers[2::3]):
        if any(t is not None and t.shape != (bn.num_features,) for t in (rm, rv)):
            return f"a {type(bn).__name__}({bn.num_features})'s running statistics have other shapes"
        if nbt is not None and nbt.dtype != torch.long:
            return f"a {type(bn).__name__}'s num_batches_tracked is {nbt.dtype}"
    tensors = [t for t in params + buffers[0::3] + buffers[1::3] if t is not None]
    if len(set(map(id, tensors))) != len(tensors):
        return "a tensor is used in two places"
    if any(type(t) not in _PLAIN for t in tensors):
        return "a parameter or buffer is a tensor subclass, which the kernels cannot read"
    dtypes, devices = {t.dtype for t in tensors}, {t.device for t in tensors}
    if len(dtypes) != 1 or len(devices) != 1 or not dtypes <= set(FLOAT_DTYPES):
        return f"the parameters and buffers are of dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}"
    if not all(t.is_contiguous() for t in itertools.compress(params + buffers, check_kernel_read)):
        return "a tensor of the channel branch or the reduce convolution is not contiguous, as the kernels index it"
    return dtypes.pop(), devices.pop()


def _convs(s: Structure):
    """(convolution, whether it is one of the 1×1 ones) for each convolution of s."""
    for conv in (s.reduce, s.conv_final):
        if conv is not None:
            yield conv, True
    for d in s.dilated:
        yield d.conv, False
