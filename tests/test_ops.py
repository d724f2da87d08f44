"""The public ``bam_gate``: input checks, backend dispatch, the custom op under autograd,
``opcheck`` and ``torch.compile``."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import bam_fused
from bam_fused import bam_gate
from bam_fused.ops import _GateFunction
from exact import assert_as_exact_as, float64_copy
from gate_cases import MODES, assert_close, assert_maps_apart, make_inputs, reference64

SHAPE = (2, 6, 4, 5)


def _inputs(device, dtype=torch.float32):
    x, mc, ms, _ = make_inputs(SHAPE, "sum", dtype, device=device)
    return x, mc, ms


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"x": "nope"}, TypeError, ["x", "Tensor"]),
        ({"x": torch.zeros(2, 6, 4, 5, dtype=torch.int32)}, TypeError, ["x", "int32"]),
        ({"x": torch.zeros(6, 4, 5)}, ValueError, ["x", "(6, 4, 5)"]),
        ({"mc": torch.zeros(2, 5)}, ValueError, ["mc", "(2, 5)", "(2, 6, 4, 5)"]),
        ({"mc": torch.zeros(2, 6, 1)}, ValueError, ["mc", "(2, 6, 1)"]),
        ({"mc": torch.zeros(3, 6)}, ValueError, ["mc", "(3, 6)"]),
        ({"ms": torch.zeros(2, 5, 4)}, ValueError, ["ms", "(2, 5, 4)", "(2, 4, 5)"]),
        ({"ms": torch.zeros(2, 2, 4, 5)}, ValueError, ["ms", "(2, 2, 4, 5)"]),
        ({"ms": torch.zeros(2, 20)}, ValueError, ["ms", "(2, 20)"]),
        ({"mc": torch.zeros(2, 6, dtype=torch.bool)}, TypeError, ["mc", "bool"]),
        ({"ms": torch.zeros(2, 4, 5, dtype=torch.int64)}, TypeError, ["ms", "int64"]),
        ({"mc": [1.0] * 6}, TypeError, ["mc", "list"]),
        ({"mc": None, "ms": None}, ValueError, ["mc", "ms", "None"]),
        ({"combine": "mean"}, ValueError, ["combine", "mean"]),
        ({"backend": "cuda"}, ValueError, ["backend", "cuda"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_names_argument_and_shapes(kwargs, exc, words):
    x, mc, ms = _inputs("cpu")
    args = {"x": x, "mc": mc, "ms": ms, **kwargs}
    combine, backend = args.pop("combine", "sum"), args.pop("backend", "auto")
    with pytest.raises(exc) as info:
        bam_gate(args["x"], args["mc"], args["ms"], combine=combine, backend=backend)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_backends_agree_with_reference(mode, backend, device):
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float32, device=device)
    leaves = [t.requires_grad_() for t in (x, mc, ms) if t is not None]
    y = bam_gate(x, mc, ms, combine=combine, backend=backend)
    g = torch.randn_like(y)
    grads = iter(torch.autograd.grad(y, leaves, g))
    y_ref, grads_ref = reference64(x, mc, ms, combine, True, g)
    assert_close(y, y_ref, "y")
    for name, t, want in zip(("gx", "gmc", "gms"), (x, mc, ms), grads_ref):
        if t is not None:
            assert_close(next(grads), want, name)


def test_map_shapes_with_singleton_dims(device):
    """mc (N, C, 1, 1) and ms (N, 1, H, W) are accepted as they are: their gradients keep those
    shapes, and autograd records no reshape between them and the gate (one node less each)."""
    x, mc, ms = _inputs(device)
    mc4 = mc.view(2, 6, 1, 1).clone().requires_grad_()
    ms4 = ms.view(2, 1, 4, 5).clone().requires_grad_()
    y = bam_gate(x, mc4, ms4, backend="triton")
    inputs = {fn.variable for fn, _ in y.grad_fn.next_functions if fn is not None and hasattr(fn, "variable")}
    assert inputs == {mc4, ms4}, y.grad_fn.next_functions
    g = torch.randn_like(y)
    y.backward(g)
    assert mc4.grad.shape == mc4.shape and ms4.grad.shape == ms4.shape
    y_ref, (_, gmc_ref, gms_ref) = reference64(x, mc, ms, "sum", True, g)
    assert_close(y, y_ref, "y")
    assert_close(mc4.grad.view(mc.shape), gmc_ref, "gmc")
    assert_close(ms4.grad.view(ms.shape), gms_ref, "gms")


def test_dispatch(monkeypatch):
    """auto: Triton on CPU only under the interpreter (through the autograd.Function when a gradient
    is wanted, straight to the kernels when not); triton: a clear error where it cannot run."""
    calls = []
    monkeypatch.setattr(_GateFunction, "apply", staticmethod(lambda *a: calls.append(a) or a[0].clone()))
    x, mc, ms = _inputs("cpu")
    x.requires_grad_()
    bam_gate(x, mc, ms)
    assert len(calls) == 1
    bam_gate(x, mc, ms, backend="reference")
    assert len(calls) == 1
    inference = []
    monkeypatch.setattr(bam_fused.ops, "_gate_forward", lambda *a: inference.append(a) or a[0].clone())
    with torch.no_grad():  # nothing to differentiate: the kernels run without an autograd node
        bam_gate(x, mc, ms)
    assert len(calls) == 1 and len(inference) == 1
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bam_gate(x, mc, ms)
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA"):
        bam_gate(x, mc, ms, backend="triton")


def test_output_keeps_layout_and_dtype(device):
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x, mc, ms, _ = make_inputs(SHAPE, "sum", dtype, channels_last=True, device=device)
        for backend in ("triton", "reference"):
            y = bam_gate(x, mc, ms, backend=backend)
            assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last), backend


def test_other_layouts_are_copied_once(device):
    base, mc, ms = _inputs(device)
    x = base.transpose(2, 3).contiguous().transpose(2, 3)  # neither NCHW nor channels_last
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    assert_close(bam_gate(x, mc, ms, backend="triton"), reference64(x, mc, ms, "sum", True), "y")


@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_saves_only_inputs_for_backward(path, device):
    """Both bindings keep x, mc and ms for backward and no full-size tensor of their own."""
    x, mc, ms = _inputs(device)
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        if path == "eager":
            bam_gate(x, mc, ms, backend="triton")
        else:
            torch.ops.bam_fused.gate(x, mc, ms, "sum", True)
    assert len(saved) == 3
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), mc.data_ptr(), ms.data_ptr()}


@pytest.mark.parametrize("mode", ["sum", "max", "channel", "spatial"])
def test_eager_path_matches_custom_op_bitwise(mode, device, monkeypatch):
    """Eager calls skip the custom-op dispatch (autograd.Function) and compute the same bits."""
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float32, device=device)
    leaves = [t.requires_grad_() for t in (x, mc, ms) if t is not None]
    y_op = torch.ops.bam_fused.gate(x, mc, ms, combine, True)
    g = torch.randn_like(y_op)
    grads_op = torch.autograd.grad(y_op, leaves, g)

    def no_custom_op(*args):
        raise AssertionError("eager bam_gate went through the custom op")

    monkeypatch.setattr(bam_fused.ops, "_gate_op", no_custom_op)
    y = bam_gate(x, mc, ms, combine=combine, backend="triton")
    assert torch.equal(y, y_op)
    for a, b in zip(torch.autograd.grad(y, leaves, g), grads_op):
        assert torch.equal(a, b)


@pytest.mark.parametrize("combine", ["sum", "product", "max"])
def test_gradcheck_float64(combine, device):
    x, mc, ms, _ = make_inputs((2, 3, 2, 3), "sum", torch.float64, device=device)
    assert_maps_apart(mc, ms)
    inputs = [t.requires_grad_() for t in (x, mc, ms)]
    fn = lambda x, mc, ms: bam_gate(x, mc, ms, combine=combine, backend="triton")
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("mode", ["sum", "max", "channel", "spatial"])
def test_opcheck(mode, device):
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float32, device=device)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.bam_fused.gate.default, (x, mc, ms, combine, True))
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.bam_fused.gate_backward.default, (g, x.detach(), mc, ms, combine, False))


def _loss_results(model, x, run=None) -> dict:
    """name → tensor: y = ``run`` (default model) of x and every parameter's gradient of ``y.square().sum()``."""
    model.zero_grad(set_to_none=True)
    y = (run or model)(x)
    y.square().sum().backward()
    return {"y": y.detach()} | {f"{n}.grad": p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    bam = bam_fused.FusedBAM(32, 8, backend="triton")
    # A hook sends FusedBAM down its per-op path, whose gate is the op under test (unhooked, the
    # whole module is one op: tests/test_compile_path.py).
    bam.spatial_att.gate_s.gate_s_conv_final.register_forward_hook(lambda *args: None)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), bam).to(device)
    # Eager BAM holding the same weights, in float32 and float64: what FusedBAM, compiled or not, computes.
    eager = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), bam_fused.BAM(32, 8)).to(device)
    eager.load_state_dict(model.state_dict())
    exact = float64_copy(eager)
    # A batch of 4: the channel MLP's BatchNorm1d over 2 samples turns float32 rounding into errors of
    # 1e-4 in eager and compiled alike (seed-dependent), over 4 it does not.
    x = torch.randn(4, 3, 6, 6, device=device)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    got = _loss_results(model, x, compiled)
    assert counter.frame_count == 1
    assert "bam_fused.gate" in counter.graphs[0].code, "the compiled graph must call the fused op"
    want, want64 = _loss_results(eager, x), _loss_results(exact, x.double())
    # Inductor reorders the convolution and BN reductions: as near float64 as eager BAM, not equal to it.
    assert_as_exact_as(got, want, want64, name="compiled")
    assert_as_exact_as(_loss_results(model, x), want, want64, name="not compiled")
