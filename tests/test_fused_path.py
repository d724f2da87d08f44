"""FusedBAM computes only the module it was handed: eager BAM's numbers, or eager's error with no
state changed, for modules changed and fed the way users change and feed them.

Each case builds an eager BAM and a FusedBAM with the same weights in float64, applies the same
change to both, and runs a training step on each: the output, x's gradient, every parameter's
gradient and every buffer must agree (to float64 rounding, NaN where eager has NaN). Where the
fused path cannot compute the changed module it must take the per-op path (``fused_path_blocker``
names why); where it can, it must (a check that sends everything the per-op way would pass the
comparisons). ``test_a_broken_check_is_caught`` breaks the structure check and sees the
comparisons fail.
"""

import math

import pytest
import torch
from torch import nn

from bam_fused import fused_path as fused_path_module
from bam_fused.fused_bam import _FusedBAMFunction
from bam_fused.fused_path import fused_path_blocker
from exact import TOL64, module_pair

SHAPE = (3, 16, 5, 6)


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory():
    """torch.empty returns NaN here (PyTorch's deterministic mode): an element a kernel forgets to
    write shows up as a NaN eager does not have."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def _twins(change=None, dtype=torch.float64, args=(16, 4), **kwargs):
    """(eager BAM, FusedBAM) with the same weights, ``change`` applied to each (same seed)."""
    eager, fused = module_pair(dtype, args=args, dilation_val=2, **kwargs)
    for module in (eager, fused):
        torch.manual_seed(1)
        if change is not None:
            change(module)
    return eager, fused


def _step(module, x, g):
    """One training step: (y, x.grad, {name: grad}, {name: buffer}, whether the fused node ran)."""
    module.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_()
    y = module(xi)
    y.backward(g)
    grads = {n: p.grad for n, p in module.named_parameters()}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    return y.detach(), xi.grad, grads, buffers, isinstance(y.grad_fn, _FusedBAMFunction._backward_cls)


def _assert_same(got, want, name):
    assert (got is None) == (want is None), name
    if got is None:
        return
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN where eager has none, or the reverse"
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), **TOL64, msg=name)


def _assert_steps_agree(eager, fused, fused_path: bool, x=None, steps=2):
    """``steps`` training steps agree in full; ``fused_path``: whether FusedBAM must take its fused path."""
    x = torch.randn(SHAPE, dtype=torch.float64) * 2 if x is None else x
    for _ in range(steps):
        g = torch.randn_like(x)
        blocker = fused_path_blocker(fused, x)
        assert (blocker is None) == fused_path, blocker
        y_e, gx_e, grads_e, buffers_e, _ = _step(eager, x, g)
        y_f, gx_f, grads_f, buffers_f, took_fused = _step(fused, x, g)
        assert took_fused == fused_path
        _assert_same(y_f, y_e, "y")
        _assert_same(gx_f, gx_e, "x.grad")
        assert grads_f.keys() == grads_e.keys() and buffers_f.keys() == buffers_e.keys()
        for name in grads_e:
            _assert_same(grads_f[name], grads_e[name], f"{name}.grad")
        for name in buffers_e:
            _assert_same(buffers_f[name], buffers_e[name], name)
    return blocker


def _assert_same_error(eager, fused, x):
    """Both raise the same type (the same message where the fused path raises it); FusedBAM's state
    is untouched when its fused path raised, and eager's where the per-op path did."""
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    eager_before = {k: v.clone() for k, v in eager.state_dict().items()}
    with pytest.raises(Exception) as eager_error:
        eager(x)
    blocker = fused_path_blocker(fused, x)
    with pytest.raises(type(eager_error.value)) as fused_error:
        fused(x)
    after = fused.state_dict()
    if blocker is None:  # the fused path raised: before any effect, with eager's words
        assert str(fused_error.value) == str(eager_error.value)
        assert all(torch.equal(after[k], before[k]) for k in before), "state changed before the error"
    else:  # the per-op path is eager's own code: eager's effects
        eager_after = eager.state_dict()
        assert all(torch.equal(after[k] - before[k], eager_after[k] - eager_before[k]) for k in before)
    return blocker


def _seq(module, branch):
    return module.channel_att.gate_c if branch == "channel" else module.spatial_att.gate_s


# Changes the fused path cannot compute: each must run the per-op path, to eager's numbers.
PER_OP_CHANGES = {
    "silu in the channel branch": lambda m: setattr(m.channel_att.gate_c, "gate_c_relu_1", nn.SiLU()),
    "leaky relu in the spatial branch": lambda m: setattr(m.spatial_att.gate_s, "gate_s_relu_di_0", nn.LeakyReLU(0.2)),
    "a layer appended to gate_s": lambda m: m.spatial_att.gate_s.add_module("extra", nn.Tanh()),
    "a layer inserted in gate_c": lambda m: setattr(m.channel_att, "gate_c", _with_dropout(m.channel_att.gate_c)),
    "one dilated conv deleted, its BN kept": lambda m: delattr(m.spatial_att.gate_s, "gate_s_conv_di_1"),
    "a dilated conv shared": lambda m: setattr(
        m.spatial_att.gate_s, "gate_s_conv_di_1", m.spatial_att.gate_s.gate_s_conv_di_0
    ),
    "a BatchNorm shared": lambda m: setattr(
        m.spatial_att.gate_s, "gate_s_bn_di_1", m.spatial_att.gate_s.gate_s_bn_di_0
    ),
    "a BatchNorm shared, momentum=None": lambda m: _share_cumulative_bn(m.spatial_att.gate_s),
    "a weight shared": lambda m: setattr(
        m.spatial_att.gate_s.gate_s_conv_di_1, "weight", m.spatial_att.gate_s.gate_s_conv_di_0.weight
    ),
    "a transposed Linear weight": lambda m: _transpose_weight(m.channel_att.gate_c.gate_c_fc_0),
    "a strided BN weight": lambda m: _strided(m.channel_att.gate_c.gate_c_bn_1, "weight"),
    "a strided running_mean": lambda m: _strided(m.channel_att.gate_c.gate_c_bn_final, "running_mean"),
    "reflect padding": lambda m: setattr(m.spatial_att.gate_s.gate_s_conv_di_0, "padding_mode", "reflect"),
    "a grouped dilated conv": lambda m: _replace_conv(m, "gate_s_conv_di_0", groups=2),
    "a BN without affine": lambda m: setattr(
        m.spatial_att.gate_s, "gate_s_bn_di_0", nn.BatchNorm2d(4, affine=False).double()
    ),
    "a SyncBatchNorm": lambda m: setattr(m.channel_att.gate_c, "gate_c_bn_1", _sync_bn(4)),
    "a Linear subclass": lambda m: setattr(m.channel_att.gate_c, "gate_c_fc_final", _MyLinear(4, 16).double()),
    "an instance forward": lambda m: setattr(m.spatial_att.gate_s.gate_s_bn_reduce0, "forward", lambda t: 2 * t),
    "a forward hook": lambda m: m.spatial_att.gate_s.gate_s_conv_final.register_forward_hook(lambda mod, i, o: o * 2),
    "a parametrization": lambda m: _parametrize(m.spatial_att.gate_s.gate_s_conv_di_0),
}


def _share_cumulative_bn(gate_s: nn.Sequential) -> None:
    """One cumulative-average BatchNorm at two places: eager counts its batches between its two
    uses (factors 1/(n+1), then 1/(n+2)), a fused call would count both before either."""
    gate_s.gate_s_bn_di_0.momentum = None
    gate_s.gate_s_bn_di_1 = gate_s.gate_s_bn_di_0


class _MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.5


def _transpose_weight(linear: nn.Linear) -> None:
    w = linear.weight.detach()
    linear.weight = nn.Parameter(w.t().contiguous().t())  # the same values, column-major


def _strided(module: nn.Module, name: str) -> None:
    t = getattr(module, name).detach()
    wide = torch.zeros(2 * t.numel(), dtype=t.dtype)
    wide[::2] = t
    if name in module._parameters:
        setattr(module, name, nn.Parameter(wide[::2]))
    else:
        module.register_buffer(name, wide[::2])


def _replace_conv(module, name, **options):
    gate_s = module.spatial_att.gate_s
    old = getattr(gate_s, name)
    new = nn.Conv2d(4, 4, **{"kernel_size": 3, "padding": 2, "dilation": 2, **options}).double()
    setattr(gate_s, name, new)
    assert new.weight.shape != old.weight.shape or options


def _with_dropout(gate_c: nn.Sequential) -> nn.Sequential:
    """gate_c with an identity-valued layer (dropout of p = 0) after its ReLU."""
    layers = list(gate_c)
    return nn.Sequential(*layers[:4], nn.Dropout(0.0), *layers[4:])


def _sync_bn(n):
    return nn.SyncBatchNorm(n).double()


class _Scale(nn.Module):
    def forward(self, w):
        return 0.5 * w


def _parametrize(conv):
    torch.nn.utils.parametrize.register_parametrization(conv, "weight", _Scale())


@pytest.mark.parametrize("name", list(PER_OP_CHANGES))
def test_changed_modules_run_the_per_op_path_to_eager_numbers(name):
    eager, fused = _twins(PER_OP_CHANGES[name])
    if name == "a SyncBatchNorm":  # trains only under torch.distributed: eval
        eager.eval(), fused.eval()
    _assert_steps_agree(eager, fused, fused_path=False)


# Changes the fused path computes: it must take them, to eager's numbers.
FUSED_CHANGES = {
    "one dilated conv deleted whole": lambda m: [
        delattr(m.spatial_att.gate_s, f"gate_s_{layer}_di_1") for layer in ("conv", "bn", "relu")
    ],
    "padding='same'": lambda m: _replace_conv(m, "gate_s_conv_di_0", padding="same"),
    "a 5x5 dilated conv": lambda m: _replace_conv(m, "gate_s_conv_di_1", kernel_size=5, padding=4),
    "padding='valid' on the 1x1 convs": lambda m: [
        setattr(m.spatial_att.gate_s, name, nn.Conv2d(*shape, 1, padding="valid").double())
        for name, shape in (("gate_s_conv_reduce0", (16, 4)), ("gate_s_conv_final", (4, 1)))
    ],
    "a transposed dilated conv weight": lambda m: _transpose_conv_weight(m.spatial_att.gate_s.gate_s_conv_di_1),
    "momentum=None": lambda m: [setattr(bn, "momentum", None) for bn in _bns(m)],
    "num_batches_tracked=None": lambda m: [setattr(bn, "num_batches_tracked", None) for bn in _bns(m)],
    "num_batches_tracked=None with momentum=None": lambda m: [
        (setattr(bn, "num_batches_tracked", None), setattr(bn, "momentum", None)) for bn in _bns(m)
    ],
    "BatchNorms in mixed modes": lambda m: [bn.eval() for bn in _bns(m)[::2]],
    "untracked BatchNorms": lambda m: [setattr(bn, "track_running_stats", False) for bn in _bns(m)[1::2]],
    "no Flatten": lambda m: delattr(m.channel_att.gate_c, "flatten"),
    "inplace ReLUs": lambda m: [setattr(r, "inplace", True) for r in m.modules() if isinstance(r, nn.ReLU)],
}


def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _transpose_conv_weight(conv):
    w = conv.weight.detach()
    conv.weight = nn.Parameter(w.transpose(0, 1).contiguous().transpose(0, 1))


@pytest.mark.parametrize("name", list(FUSED_CHANGES))
def test_changes_the_fused_path_computes(name):
    eager, fused = _twins(FUSED_CHANGES[name])
    _assert_steps_agree(eager, fused, fused_path=True, steps=3)


def test_a_reduce_convolution_with_padding_runs_the_per_op_path():
    """Padding on the 1×1 reduce convolution grows ms past x's map: eager's gate raises, after the
    branches ran; FusedBAM must not compute the unpadded module instead."""
    change = lambda m: setattr(m.spatial_att.gate_s, "gate_s_conv_reduce0", nn.Conv2d(16, 4, 1, padding=1).double())
    eager, fused = _twins(change)
    x = torch.randn(SHAPE, dtype=torch.float64)
    assert "1×1" in _assert_same_error(eager, fused, x)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("frozen", [(), ("gate_c_bn_1",), ("gate_c_bn_1", "gate_s_bn_reduce0")], ids=len)
def test_one_sample_in_training_raises_eager_error_with_nothing_changed(variant, frozen):
    """N = 1 on a 1×1 map in training: eager raises at the first train-mode BatchNorm (after the
    ``frozen`` ones, in eval mode) once it has counted the batch; FusedBAM raises the same before
    anything moves."""
    eager, fused = _twins(variant=variant)
    for module in (eager, fused):
        for name, m in module.named_modules():
            if name.rsplit(".", 1)[-1] in frozen:
                m.eval()
    x = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    assert _assert_same_error(eager, fused, x) is None


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_non_positive_eps_as_eager(eps, training):
    """eps ≤ 0 fails in training and eps < 0 always (F.batch_norm's checks); eps = 0 in eval runs."""
    eager, fused = _twins(lambda m: setattr(m.spatial_att.gate_s.gate_s_bn_di_1, "eps", eps))
    eager.train(training), fused.train(training)
    if eps == 0.0 and not training:
        _assert_steps_agree(eager, fused, fused_path=True)
    else:
        assert _assert_same_error(eager, fused, torch.randn(SHAPE, dtype=torch.float64)) is None


@pytest.mark.parametrize(
    "module_dtype, x_dtype",
    [(torch.float32, torch.float16), (torch.float64, torch.float32), (torch.float32, torch.float64)],
    ids=str,
)
def test_dtype_mismatch_raises_as_eager_with_nothing_changed(module_dtype, x_dtype):
    eager, fused = _twins(dtype=module_dtype)
    x = torch.randn(SHAPE, dtype=x_dtype)
    assert "x is" in _assert_same_error(eager, fused, x)


def test_float64_module_under_autocast_computes_in_float64():
    """CPU autocast leaves float64 alone: the fused path must too (it computed the branches in bf16)."""
    eager, fused = _twins()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _assert_steps_agree(eager, fused, fused_path=True)


def test_float32_module_with_half_x_under_autocast_of_another_half_type_runs_per_op():
    eager, fused = _twins(dtype=torch.float32)
    x = torch.randn(SHAPE, dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in fused_path_blocker(fused, x)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_wide_spatial_only_module_takes_the_per_op_path(training):
    """A reduce convolution of 1040 channels: more than one program of pool_reduce and input_grad
    holds (z0's accumulator, Wrᵀ and gWr's in registers), so the call takes the per-op path, says
    why, and gives eager's numbers."""
    eager, fused = _twins(args=(1040, 1), dilation_conv_num=0, branches="spatial", variant="official")
    eager.train(training), fused.train(training)
    x = torch.randn(2, 1040, 2, 3, dtype=torch.float64)
    assert "not h=1040" in fused_path_blocker(fused, x)
    _assert_steps_agree(eager, fused, fused_path=False, x=x, steps=1)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_nan_and_inf_in_x_propagate_as_in_eager(variant, value):
    """Eager's gradients carry a NaN in x into every parameter; ReLU's backward lets it through."""
    eager, fused = _twins(variant=variant)
    x = torch.randn(SHAPE, dtype=torch.float64)
    x[1, 3, 2, 4] = value
    _assert_steps_agree(eager, fused, fused_path=True, x=x, steps=1)


def test_nan_reaching_the_channel_mlp_relu():
    """A NaN pooled mean reaches the channel branch's ReLU (forward and backward) in one sample."""
    eager, fused = _twins(variant="official", branches="channel")
    x = torch.randn(SHAPE, dtype=torch.float64)
    x[0, :, 0, 0] = math.nan
    _assert_steps_agree(eager, fused, fused_path=True, x=x, steps=1)


# Changes made after a first call, which the cached check must notice.
LATER_CHANGES = {
    "a ReLU replaced": (lambda m: setattr(m.spatial_att.gate_s, "gate_s_relu_reduce0", nn.ELU()), False),
    "a hook registered": (
        lambda m: m.channel_att.gate_c.gate_c_fc_0.register_forward_pre_hook(lambda mod, a: None),
        False,
    ),
    "a submodule moved to float32": (lambda m: m.spatial_att.gate_s.gate_s_conv_di_0.float(), False),
    "a weight's data transposed": (lambda m: _transpose_data(m.channel_att.gate_c.gate_c_fc_final), False),
    "a conv's padding attribute": (lambda m: setattr(m.spatial_att.gate_s.gate_s_conv_di_0, "padding", (1, 1)), False),
    "a conv deleted": (lambda m: delattr(m.spatial_att.gate_s, "gate_s_conv_di_0"), False),
    "a BatchNorm's buffer replaced": (lambda m: _strided(m.spatial_att.gate_s.gate_s_bn_reduce0, "running_var"), True),
    "the module moved to float32 and back": (lambda m: m.float().double(), True),
    "a BatchNorm's momentum": (lambda m: setattr(m.spatial_att.gate_s.gate_s_bn_di_0, "momentum", 0.7), True),
}


def _transpose_data(linear):
    linear.weight.data = linear.weight.data.t().contiguous().t()


@pytest.mark.parametrize("name", list(LATER_CHANGES))
def test_changes_after_the_first_call_are_seen(name):
    change, fused_path = LATER_CHANGES[name]
    eager, fused = _twins()
    _assert_steps_agree(eager, fused, fused_path=True, steps=1)
    for module in (eager, fused):
        torch.manual_seed(1)
        change(module)
    if name == "a submodule moved to float32":  # eager raises (float64 input, float32 weight): so must FusedBAM
        _assert_same_error(eager, fused, torch.randn(SHAPE, dtype=torch.float64))
    elif name == "a conv's padding attribute":  # the map grows: eager's gate raises
        assert _assert_same_error(eager, fused, torch.randn(SHAPE, dtype=torch.float64)) is not None
    else:
        _assert_steps_agree(eager, fused, fused_path=fused_path, steps=1)


def test_functional_call_swaps_are_seen():
    """torch.func.functional_call swaps the parameter dictionaries' entries (no registration): the
    fused path must compute with the tensors it is given, and go back to the module's own after."""
    eager, fused = _twins()
    x = torch.randn(SHAPE, dtype=torch.float64)
    params = {n: torch.randn_like(p) for n, p in fused.named_parameters()}
    for module in (eager, fused):
        module.eval()
    torch.testing.assert_close(fused(x), eager(x), **TOL64)  # the check is cached
    y_f = torch.func.functional_call(fused, params, (x,))
    y_e = torch.func.functional_call(eager, params, (x,))
    torch.testing.assert_close(y_f, y_e, **TOL64)
    torch.testing.assert_close(fused(x), eager(x), **TOL64)


def test_blocker_names_the_reason():
    eager, fused = _twins(PER_OP_CHANGES["silu in the channel branch"])
    assert "gate_c_relu_1 is a SiLU" in fused_path_blocker(fused, torch.randn(SHAPE, dtype=torch.float64))
    _, fused = _twins(PER_OP_CHANGES["a dilated conv shared"])
    assert "two places" in fused_path_blocker(fused, torch.randn(SHAPE, dtype=torch.float64))
    _, fused = _twins(PER_OP_CHANGES["a transposed Linear weight"])
    assert "contiguous" in fused_path_blocker(fused, torch.randn(SHAPE, dtype=torch.float64))


# A check that accepts what it should not: each case must then fail its comparison with eager.
# (A BatchNorm shared with a fixed momentum would pass: each place updates the statistics in eager's order.)
MUTATIONS = (
    "silu in the channel branch",
    "a BatchNorm shared, momentum=None",
    "a transposed Linear weight",
    "a strided running_mean",
)


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_check_is_caught(name, monkeypatch):
    """Mutation check: with the structure check made lenient (layers taken by position whatever their
    type; no sharing, stride or shape checks), the fused path computes a different module, and the
    comparison above fails."""

    def any_layer(items, pos, cls, role, path):
        return items[pos][1] if pos < len(items) else f"{path} ends"

    monkeypatch.setattr(fused_path_module, "_next_layer", any_layer)
    monkeypatch.setattr(
        fused_path_module, "_tensor_reason", lambda s, C, params, buffers, kr: (params[0].dtype, params[0].device)
    )
    eager, fused = _twins(PER_OP_CHANGES[name])
    with pytest.raises(AssertionError):
        _assert_steps_agree(eager, fused, fused_path=True)


def test_the_structure_is_checked_once_until_something_changes(monkeypatch):
    """A call re-checks the cache, not the module: the walk runs again only after a change."""
    walks = []
    real = fused_path_module._structure
    monkeypatch.setattr(fused_path_module, "_structure", lambda *a: walks.append(1) or real(*a))
    eager, fused = _twins()
    x = torch.randn(SHAPE, dtype=torch.float64)
    for _ in range(3):
        fused(x)
    with torch.no_grad():
        fused.eval()(x)
    assert len(walks) == 1
    fused.spatial_att.gate_s.gate_s_conv_di_0.padding = (2, 2)  # a plain attribute, the same value
    fused(x)
    assert len(walks) == 1
    fused.channel_att.gate_c.gate_c_relu_1 = nn.ReLU()  # a registration
    fused(x)
    assert len(walks) == 2
