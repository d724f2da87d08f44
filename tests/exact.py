"""Judging float32 and half-precision results against a float64 run: the harness every test uses.

Two implementations of one computation (FusedBAM and eager BAM, a compiled and an eager model, a
converted and a source network) round in different places and orders, and train-mode BatchNorm over
a few samples amplifies the last bits. How far apart two float32 results land therefore depends on
the machine (its SIMD width, its thread count, its library builds): a fixed tolerance between them
holds only where it was chosen. Here each result is held against a float64 run of the reference
with the same weights and inputs instead. The implementation under test (A) may be at most FACTOR
times as far from it as the reference run in the same precision (B) is, plus a floor per dtype:
rounding in another order stays inside that bound, a different formula lands far outside it.

Errors are relative L2 norms over a whole tensor. A result whose exact value is 0 up to rounding
(the gradient of a bias feeding a train-mode BatchNorm) is measured against a ``scale`` instead:
by default its layer's largest gradient (:func:`layer_scales`).
"""

import copy
from collections.abc import Mapping

import torch
from torch import nn

from bam_fused import BAM, FusedBAM
from bam_fused.fused_path import fused_path_blocker

# float64 against float64: the same math in another order, compared directly (absolute, relative).
TOL64 = (1e-9, 1e-9)
# Below float64: A's relative error against the float64 run may be FACTOR times B's plus FLOOR.
FACTOR = 3.0
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def randomize_bn(module: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters in every BatchNorm of ``module``, so
    that eval mode is a real test and every branch's final BN matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)


def module_pair(dtype=torch.float32, device="cpu", args=(16, 4), **kwargs) -> tuple[BAM, FusedBAM]:
    """(eager BAM, FusedBAM with backend="triton") holding the same randomized weights and buffers.

    ``args`` and ``kwargs`` go to both constructors (gate_channel, reduction_ratio, variant, ...)."""
    eager = BAM(*args, **kwargs).to(device=device, dtype=dtype)
    randomize_bn(eager)
    fused = FusedBAM(*args, **kwargs, backend="triton").to(device=device, dtype=dtype)
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` (same weights, buffers, modes and hooks): the exact run."""
    return copy.deepcopy(module).double()


def step(module: nn.Module, x: torch.Tensor, g: torch.Tensor, autocast_dtype=None):
    """One forward and backward of ``module`` on a copy of x (N, C, H, W) with upstream gradient g
    (x's shape): (y, ∂L/∂x, {name: ∂L/∂param}), under ``autocast_dtype`` autocast when given."""
    module.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = module(xi)
    y.backward(g.to(y.dtype))
    return y.detach(), xi.grad, {n: p.grad for n, p in module.named_parameters()}


def results(module: nn.Module, x: torch.Tensor, g: torch.Tensor, autocast_dtype=None) -> dict[str, torch.Tensor]:
    """name → tensor after one :func:`step`: "y", "x.grad", "<param>.grad" for every parameter and
    every buffer (running statistics, num_batches_tracked) as the step left it."""
    y, gx, grads = step(module, x, g, autocast_dtype)
    out = {"y": y, "x.grad": gx} | {f"{k}.grad": v for k, v in grads.items()}
    return out | {k: v.clone() for k, v in module.named_buffers()}


def layer_scales(exact: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """name → the norm that ``name``'s error is relative to, at least: its own exact norm, and for
    a parameter's gradient the largest of its layer's ("<layer>.weight.grad", "<layer>.bias.grad").
    A gradient that is 0 or small by cancellation (the bias of a layer feeding a train-mode
    BatchNorm, a BatchNorm's weight: Σ g·x̂ over normalised x̂) is rounding noise on the scale of
    its layer's gradients, not on its own."""
    norms = {k: v.double().norm().item() for k, v in exact.items() if v.is_floating_point()}
    layer = lambda k: k.removesuffix(".weight.grad").removesuffix(".bias.grad")
    largest = {}
    for k, n in norms.items():
        largest[layer(k)] = max(largest.get(layer(k), 0.0), n)
    return {k: largest[layer(k)] for k in norms}


def relative_errors(got, want, exact, scale: float = 0.0) -> tuple[float, float]:
    """(got's, want's) L2 distance from ``exact``, relative to the larger of exact's norm (plus
    want's error, so that an exact 0 does not divide) and ``scale``."""
    got, want, exact = (t.detach().double() for t in (got, want, exact))
    norm = max((exact.norm() + (want - exact).norm()).item(), scale) + 1e-30
    return (got - exact).norm().item() / norm, (want - exact).norm().item() / norm


def assert_error_within(err_got: float, err_want: float, dtype: torch.dtype, name: str = "", floor=None) -> None:
    """The policy itself: A's relative error at most FACTOR times B's plus ``floor`` (FLOOR[dtype])."""
    floor = FLOOR[dtype] if floor is None else floor
    assert err_got <= FACTOR * err_want + floor, f"{name}: error {err_got:.2e}, the reference's {err_want:.2e}"


def assert_close_to_exact(got, want, exact, dtype: torch.dtype, name: str = "", scale: float = 0.0) -> None:
    """One tensor: ``got`` (A) no further from the float64 ``exact`` than :func:`assert_error_within`
    allows given ``want`` (B, computed in ``dtype`` like A); errors relative to at least ``scale``."""
    assert got.shape == exact.shape == want.shape, f"{name}: shapes {got.shape}, {want.shape}, {exact.shape}"
    assert not torch.isnan(got).any() or torch.isnan(want).any(), f"{name}: NaN (an unwritten element?)"
    assert_error_within(*relative_errors(got, want, exact, scale), dtype, name)


def assert_as_exact_as(got, want, exact, dtype: torch.dtype | None = None, *, scale=None, name: str = "") -> None:
    """Implementation A's results ``got`` are as near the float64 run ``exact`` as implementation
    B's ``want``, both computed in ``dtype`` (autocast's dtype where outputs stay float32; default
    got's dtype), by :func:`assert_close_to_exact` per tensor.

    got, want, exact: one tensor each, or mappings name → tensor with the same keys (as
    :func:`results` returns). Integer tensors (num_batches_tracked) must be equal in all three.
    In float64 (dtype float64) got must equal exact to TOL64. scale: a float, or name → float
    (default for mappings: :func:`layer_scales` of exact; a lone tensor's own norm otherwise)."""
    if isinstance(got, torch.Tensor):
        got, want, exact = {name: got}, {name: want}, {name: exact}
        scale = {name: scale or 0.0}
        name = ""
    odd = (got.keys() | want.keys() | exact.keys()) - (got.keys() & want.keys() & exact.keys())
    assert not odd, f"{name}: not in all three: {sorted(odd)}"
    if scale is None:
        scale = layer_scales(exact)
    elif not isinstance(scale, Mapping):
        scale = dict.fromkeys(got, scale)
    for key in got:
        label = f"{name}: {key}" if name else key
        a, b, e = got[key], want[key], exact[key]
        if not e.is_floating_point():
            assert torch.equal(a, b) and torch.equal(b.cpu(), e.cpu()), f"{label}: {a}, {b}, exact {e}"
        elif (dtype or a.dtype) == torch.float64:
            torch.testing.assert_close(a, e, atol=TOL64[0], rtol=TOL64[1], msg=label)
        else:
            assert_close_to_exact(a, b, e.to(a.device), dtype or a.dtype, label, scale.get(key, 0.0))


def check_steps(eager, fused, shape, dtype=torch.float32, layout=torch.contiguous_format, autocast_dtype=None):
    """Two train steps then an eval step of ``eager`` and ``fused`` (same weights) on fresh x and g
    of ``shape`` (N, C, H, W) in ``dtype`` and ``layout``, each compared in full by :func:`results`;
    the fused path must be taken. In float64 fused must equal eager to TOL64; below it both are held
    against a float64 copy of eager (with each result's scale the largest it had over the steps)."""
    device = next(fused.parameters()).device
    tol_dtype = autocast_dtype or dtype
    exact = float64_copy(eager) if tol_dtype != torch.float64 else None
    sizes = {}  # name → the largest scale its exact value has had
    for training in (True, True, False):
        mode = "train" if training else "eval"
        x = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=layout) * 2
        g = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=layout)
        assert fused_path_blocker(fused, x) is None
        want, got = (results(m.train(training), x, g, autocast_dtype) for m in (eager, fused))
        assert got["y"].dtype == want["y"].dtype and got["y"].stride() == want["y"].stride(), mode
        if exact is None:
            assert_as_exact_as(got, want, want, torch.float64, name=mode)
            continue
        ref = results(exact.train(training), x.double(), g.double())
        sizes = {k: max(sizes.get(k, 0.0), s) for k, s in layer_scales(ref).items()}
        assert_as_exact_as(got, want, ref, tol_dtype, scale=sizes, name=mode)
