"""torch.compile(fullgraph=True) through FusedBAM: no graph break, the whole-module ops in the
generated code (forward and backward), and the same numbers as the module run eagerly.
"""

import copy

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from bam_fused import BAM, FusedBAM
from gpu_common import DEVICE, ON_GPU, assert_as_exact_as, record

pytestmark = pytest.mark.gpu


def _step(module, x, g):
    module.zero_grad(set_to_none=True)
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
    # Off the GPU a batch of 4, not 2: the channel MLP's BatchNorm1d over 2 samples turns float32
    # rounding into errors of 1e-4 in eager and compiled runs alike.
    shape = (8, 64, 14, 14) if ON_GPU else (4, 32, 6, 6)
    torch._dynamo.reset()
    module = FusedBAM(shape[1], backend="triton").to(DEVICE).train()
    # Eager BAM holding the same weights, in float32 and float64: what FusedBAM, compiled or not, computes.
    eager = BAM(shape[1]).to(DEVICE).train()
    eager.load_state_dict(module.state_dict())
    exact = copy.deepcopy(eager).double()
    x = torch.randn(shape, device=DEVICE)
    g = torch.randn(shape, device=DEVICE)
    compiled = torch.compile(module, fullgraph=True)
    (y, gx, pgrads), codes = run_and_get_code(_step, compiled, x, g)
    code = "\n".join(codes)
    calls = {op: code.count(f"bam_fused.{op}.default") for op in ("module", "module_backward", "gate")}
    record("compile/fused_bam_fullgraph", shape=list(shape), graphs=len(codes), op_calls=calls)
    assert calls["module"] >= 1 and calls["module_backward"] >= 1, f"op calls in the generated code: {calls}"

    # fp32 with inductor's own BatchNorm kernels and reassociated sums: as near a float64 run as eager
    # BAM, not bitwise equal to it; the module run without compiling too.
    names = ["y", "x.grad"] + [f"{n}.grad" for n, _ in module.named_parameters()]
    runs = ((y, gx, pgrads), _step(module, x, g), _step(eager, x, g), _step(exact, x.double(), g.double()))
    got, not_compiled, want, want64 = (dict(zip(names, [out, grad_x, *grads])) for out, grad_x, grads in runs)
    assert_as_exact_as(got, want, want64, name="compiled")
    assert_as_exact_as(not_compiled, want, want64, name="not compiled")
