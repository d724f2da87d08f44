"""The fused gate beyond a first-order eager backward: higher-order gradients, forward-mode AD,
torch.func transforms, torch.jit.trace, threads, and a TRITON_INTERPRET set too late.

Each is checked against the reference (the specification), through the kernels on this
machine's device (the interpreter on CPU).
"""

import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from bam_fused import bam_gate, reference
from bam_fused.common import LAYOUTS
from gate_cases import MODES, assert_close, assert_maps_apart, make_inputs, reference64

SHAPE = (2, 6, 4, 5)
# (mode, residual): every mode with the residual, and one without.
GATE_CASES = [(mode, True) for mode in MODES] + [("product", False)]


def _with_absent_maps(present, tensors):
    """(x, mc, ms) from ``tensors`` (the ones present, in order), None where ``present`` is False."""
    it = iter(tensors)
    return tuple(next(it) if p else None for p in present)


@pytest.mark.parametrize("binding", ["function", "custom_op"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode, residual", GATE_CASES)
def test_gradgradcheck_float64(mode, residual, layout, binding, device):
    """Second derivatives through the kernels' forward and backward (both bindings: the eager
    autograd.Function and the custom op torch.compile sees) agree with finite differences."""
    x, mc, ms, combine = make_inputs(
        (2, 3, 2, 3), mode, torch.float64, channels_last=layout == "channels_last", device=device, scale=1.0
    )
    assert_maps_apart(mc, ms)
    present = [t is not None for t in (x, mc, ms)]
    inputs = [t.requires_grad_() for t in (x, mc, ms) if t is not None]

    def gate(*tensors):
        x, mc, ms = _with_absent_maps(present, tensors)
        if binding == "custom_op":
            return torch.ops.bam_fused.gate(x, mc, ms, combine, residual)
        return bam_gate(x, mc, ms, combine=combine, residual=residual, backend="triton")

    assert torch.autograd.gradgradcheck(gate, inputs, fast_mode=True)


def _penalised_grads(x, mc, ms, combine, backend):
    """Gradients of ``y.sum() + ‖∂(y.sum())/∂x‖²`` (a WGAN-GP / R1 style penalty) for x, mc, ms."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, mc, ms)]
    y = bam_gate(*leaves, combine=combine, backend=backend)
    (gx,) = torch.autograd.grad(y.sum(), leaves[0], create_graph=True)
    (y.sum() + gx.pow(2).sum()).backward()
    return [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
def test_gradient_penalty_matches_reference(mode, layout, device):
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float64, channels_last=layout == "channels_last", device=device)
    fused = _penalised_grads(x, mc, ms, combine, "triton")
    ref = _penalised_grads(x, mc, ms, combine, "reference")
    for name, got, want in zip(("x", "mc", "ms"), fused, ref):
        if want is not None:
            assert_close(got, want.cpu(), f"grad of {name}")


@pytest.mark.parametrize("maps_require_grad", [False, True], ids=["inference", "maps_require_grad"])
@pytest.mark.parametrize("mode", ["sum", "product", "max", "spatial"])
def test_forward_ad_dual_tensors(mode, maps_require_grad, device):
    """torch.autograd.forward_ad: the output carries ẏ = ẋ·(1+s) + x·s(1−s)·ȧ (the reference's jvp)."""
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float64, device=device)
    present = [t is not None for t in (x, mc, ms)]
    primals = [t for t in (x, mc, ms) if t is not None]
    tangents = [torch.randn_like(t) for t in primals]
    if maps_require_grad:
        for t in primals[1:]:
            t.requires_grad_()
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        y, y_dot = fwAD.unpack_dual(bam_gate(*_with_absent_maps(present, duals), combine=combine))
    assert y_dot is not None, "the tangent was lost"
    ref = lambda *tensors: reference.bam_gate(*_with_absent_maps(present, tensors), combine)
    want, want_dot = torch.func.jvp(ref, tuple(p.detach() for p in primals), tuple(tangents))
    assert_close(y, want.cpu(), "y")
    assert_close(y_dot, want_dot.cpu(), "tangent")


def test_torch_func_transforms_match_reference(device):
    """jvp, vmap and grad of the gate (with the kernels' backend on this device) give the
    reference's results; the kernels cannot read the transforms' wrappers, so the reference runs."""
    x, mc, ms, combine = make_inputs(SHAPE, "product", torch.float64, device=device)
    fused = lambda x, mc, ms: bam_gate(x, mc, ms, combine=combine)
    ref = lambda x, mc, ms: reference.bam_gate(x, mc, ms, combine)
    tangents = tuple(torch.randn_like(t) for t in (x, mc, ms))
    for got, want in zip(torch.func.jvp(fused, (x, mc, ms), tangents), torch.func.jvp(ref, (x, mc, ms), tangents)):
        torch.testing.assert_close(got, want)

    batched = tuple(torch.stack([t, 2 * t, -t]) for t in (x, mc, ms))
    torch.testing.assert_close(torch.func.vmap(fused)(*batched), torch.stack([ref(*b) for b in zip(*batched)]))

    loss = lambda gate: lambda x, mc, ms: gate(x, mc, ms).square().sum()
    got = torch.func.grad(loss(fused), argnums=(0, 1, 2))(x, mc, ms)
    want = torch.func.grad(loss(ref), argnums=(0, 1, 2))(x, mc, ms)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_forced_triton_under_transforms_says_what_to_do(device):
    x, mc, ms, _ = make_inputs(SHAPE, "sum", torch.float32, device=device)
    forced = lambda x: bam_gate(x, mc, ms, backend="triton")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run under torch.func.*backend='auto'"):
        torch.func.vmap(forced)(x[None])
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD.*backend='reference'"):
        forced(fwAD.make_dual(x, torch.randn_like(x)))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the shape checks, baked in as constants
def test_jit_trace_records_the_fused_op(device):
    """torch.jit.trace records the bam_fused::gate custom op: the traced graph runs the kernels,
    on other shapes too, and differentiates through them."""
    x, mc, ms, _ = make_inputs(SHAPE, "max", torch.float32, device=device)
    traced = torch.jit.trace(lambda x, mc, ms: bam_gate(x, mc, ms, combine="max", backend="triton"), (x, mc, ms))
    assert "bam_fused::gate" in str(traced.graph)
    x2, mc2, ms2, _ = make_inputs((3, 4, 2, 7), "max", torch.float32, device=device)
    x2.requires_grad_()
    y = traced(x2, mc2, ms2)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref, (gx_ref, _, _) = reference64(x2, mc2, ms2, "max", True, g)
    assert_close(y, y_ref, "y")
    assert_close(x2.grad, gx_ref, "gx")


def test_threads_call_the_gate_at_once(device):
    """Several threads run forward and backward on different shapes at the same time: each gets
    its own right answer (under the interpreter the launches are serialised)."""
    shapes = [(2, 3, 4, 5), (1, 7, 3, 3), (3, 2, 6, 2), (2, 5, 1, 7)]
    cases = [make_inputs(shape, "sum", torch.float32, device=device) for shape in shapes]
    start = threading.Barrier(len(cases))
    failures = []

    def run(x, mc, ms, combine):
        try:
            start.wait()
            for _ in range(3):
                leaves = [t.detach().requires_grad_() for t in (x, mc, ms)]
                y = bam_gate(*leaves, combine=combine, backend="triton")
                g = torch.ones_like(y)
                grads = torch.autograd.grad(y, leaves, g)
                y_ref, grads_ref = reference64(x, mc, ms, combine, True, g)
                assert_close(y, y_ref, "y")
                for name, got, want in zip(("gx", "gmc", "gms"), grads, grads_ref):
                    assert_close(got, want, name)
        except Exception as e:  # collected: an exception in a thread would not fail the test
            failures.append(f"{tuple(x.shape)}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, "\n".join(failures)


def test_interpreter_requested_after_kernels_were_imported_is_a_clear_error():
    """TRITON_INTERPRET=1 set after the kernels were decorated (compiled, not interpreted): the
    error names the fix instead of an error from inside Triton."""
    code = (
        "import os, torch\n"
        "from bam_fused.kernels import gate_fwd\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from bam_fused import bam_gate\n"
        "bam_gate(torch.randn(1, 2, 3, 3), torch.randn(1, 2))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "TRITON_INTERPRET=1 must be set before bam_fused.kernels is first imported" in proc.stderr, proc.stderr[
        -3000:
    ]
