"""torch.compile(fullgraph=True) through FusedBAM: no graph break, the whole-module ops in the
generated code (forward and backward), and the same numbers as the module run eagerly.
"""

import copy

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from bam_fused import FusedBAM
from gpu_common import DEVICE, ON_GPU, record

pytestmark = pytest.mark.gpu


def _step(module, x, g):
    xi = x.clone().requires_grad_()
    y = module(xi)
    y.backward(g)
    return y.detach(), xi.grad, [p.grad for p in module.parameters()]


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls: TF32 differences would swamp the comparison."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_compiled_fused_bam_calls_the_op_and_matches_eager(no_tf32):
    shape = (8, 64, 14, 14) if ON_GPU else (2, 32, 6, 6)
    torch._dynamo.reset()
    module = FusedBAM(shape[1], backend="triton").to(DEVICE).train()
    twin = copy.deepcopy(module)
    x = torch.randn(shape, device=DEVICE)
    g = torch.randn(shape, device=DEVICE)
    compiled = torch.compile(module, fullgraph=True)
    (y, gx, pgrads), codes = run_and_get_code(_step, compiled, x, g)
    code = "\n".join(codes)
    calls = {op: code.count(f"bam_fused.{op}.default") for op in ("module", "module_backward", "gate")}
    record("compile/fused_bam_fullgraph", shape=list(shape), graphs=len(codes), op_calls=calls)
    assert calls["module"] >= 1 and calls["module_backward"] >= 1, f"op calls in the generated code: {calls}"

    y0, gx0, pgrads0 = _step(twin, x, g)
    # fp32 with inductor's own BatchNorm kernels and reassociated sums: close, not bitwise.
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(y, y0, **tol)
    torch.testing.assert_close(gx, gx0, **tol)
    # Some true gradients are zero (a bias feeding a train-mode BatchNorm), so their computed values
    # are rounding noise: compare each against the scale of all parameter gradients, not its own.
    scale = max(b.abs().max().item() for b in pgrads0)
    for (name, _), a, b in zip(module.named_parameters(), pgrads, pgrads0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=name: f"grad of {n}: {m}")
