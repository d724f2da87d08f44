"""FusedBAM's whole-module path (one autograd node) against eager BAM, and its fallbacks.

Every test that compares runs the same steps on an eager ``BAM`` and a ``FusedBAM`` holding the
same weights: two train steps, then an eval step, comparing outputs, x's gradient, every
parameter's gradient and every buffer (running statistics, num_batches_tracked); below float64
both are held against a float64 copy of eager (tests/exact.py). On CPU the
kernels run through the Triton interpreter. Uninitialised memory is NaN here (PyTorch's
deterministic mode fills torch.empty), so an element a kernel forgets to write shows up.
"""

import pytest
import torch
from torch import nn

from bam_fused import FusedBAM
from bam_fused.fused_bam import _FusedBAMFunction
from bam_fused.fused_path import fused_path_blocker
from bam_fused.kernels.layout import hw_strides
from benchmarks.module_cost import module_cost
from exact import assert_as_exact_as, check_steps, float64_copy, module_pair, results, step


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory():
    """torch.empty and friends return NaN (PyTorch's deterministic mode), so unwritten outputs fail
    (warn_only: on CUDA, eager BAM's cuBLAS calls have no deterministic mode without extra setup)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("combine", [None, "sum", "product", "max"])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_matches_eager_float64(variant, combine, layout, device):
    """Both variants, every combine, both layouts, a ragged non-square map: fp64 agrees to ~1e-12."""
    eager, fused = module_pair(
        torch.float64, args=(24, 4), dilation_val=2, variant=variant, combine=combine, device=device
    )
    check_steps(eager, fused, (3, 24, 5, 7), torch.float64, layout)


@pytest.mark.parametrize("reduction_ratio", [4, 16])
@pytest.mark.parametrize("dilation_conv_num", [0, 1, 2])
@pytest.mark.parametrize("branches", ["both", "channel", "spatial"])
def test_branches_depths_and_widths(branches, dilation_conv_num, reduction_ratio, device):
    """Each branch alone, 0 to 2 dilated convolutions, h = 2 to 8 (padded to 16 for tl.dot), fp32."""
    eager, fused = module_pair(
        args=(32, reduction_ratio),
        dilation_conv_num=dilation_conv_num,
        dilation_val=1,
        branches=branches,
        device=device,
    )
    check_steps(eager, fused, (4, 32, 6, 9))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_module(dtype, device):
    """A module and x in a half type: every intermediate rounded where eager rounds it. (Batch and
    map large enough that BatchNorm's backward does not turn bf16 rounding into chaos: at 4×16×6×5
    eager's own error against float64 ranged 0.6 %–29 % over four seeds.)"""
    eager, fused = module_pair(dtype, args=(32, 4), variant="official", device=device)
    check_steps(eager, fused, (8, 32, 8, 8), dtype, torch.channels_last)


def test_autocast_bfloat16(device):
    """fp32 weights, fp32 x, bf16 autocast: the branches in bf16 as eager's autocast runs them."""
    eager, fused = module_pair(args=(32, 4), device=device)
    check_steps(eager, fused, (8, 32, 8, 7), torch.float32, autocast_dtype=torch.bfloat16)


def test_batch_norm_options(device):
    """momentum=None (cumulative average) and BNs that track no running statistics (fp64: the
    biases before batch-statistics BNs have gradients that fp32 rounds to noise of ~1e-2 here)."""
    eager, fused = module_pair(torch.float64, variant="paper", device=device)
    for module in (eager, fused):
        gate_s = module.spatial_att.gate_s
        gate_s.gate_s_bn_di_0.momentum = None
        module.channel_att.gate_c.gate_c_bn_1.momentum = None
        for name in ("gate_s_bn_reduce0", "gate_s_bn_final"):
            bn = nn.BatchNorm2d(getattr(gate_s, name).num_features, track_running_stats=False)
            setattr(gate_s, name, bn.to(device, torch.float64))
        module.channel_att.gate_c.gate_c_bn_final = nn.BatchNorm1d(16, track_running_stats=False).to(
            device, torch.float64
        )
    fused.load_state_dict(eager.state_dict())
    check_steps(eager, fused, (3, 16, 4, 4), torch.float64)


def test_one_sample_in_training_fails_as_eager_does(device):
    """Eager's error and message; FusedBAM raises it before anything moves (eager has counted the batch)."""
    eager, fused = module_pair(device=device)
    x = torch.randn(1, 16, 4, 4, device=device)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    errors = []
    for module in (eager, fused):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as info:
            module.train()(x)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    for name, value in fused.state_dict().items():
        assert torch.equal(value, before[name]), name
    eager.eval(), fused.eval()  # eval mode takes one sample: judged against a float64 run
    assert_as_exact_as(fused(x), eager(x), float64_copy(eager)(x.double()), torch.float32, name="eval: y")


def test_one_autograd_node_and_only_x_saved_full_size(device):
    eager, fused = module_pair(args=(16, 4), device=device)
    x = torch.randn(2, 16, 5, 5, requires_grad=True, device=device)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        y = fused.train()(x)
    assert type(y.grad_fn).__name__ == "_FusedBAMFunctionBackward"
    assert [
        fn for fn, _ in y.grad_fn.next_functions if fn is not None and "AccumulateGrad" not in type(fn).__name__
    ] == []
    assert sizes.count(x.numel()) == 1, sizes  # x itself, nothing else of its size


def test_cost_counts(device):
    """The cost the issue asks for (one train-mode fwd+bwd of FusedBAM(64) on 2×64×8×8, float32)."""
    torch.use_deterministic_algorithms(False)  # the count must not include NaN fills
    for variant in ("paper", "official"):
        torch.manual_seed(0)
        module = FusedBAM(64, variant=variant).to(device).train()
        cost, ops = module_cost(module, torch.randn(2, 64, 8, 8, device=device, requires_grad=True))
        assert cost.autograd_nodes == 1, cost
        assert cost.full_size_operands <= 8 and cost.full_size_created <= 2, cost
        assert cost.compute_calls <= 40 and cost.aten_calls <= 70, (cost, ops)
        assert ops.count("detach") == len(list(FusedBAM(64, variant=variant).parameters())) + 1


def test_deterministic(device):
    _, fused = module_pair(device=device)
    x = torch.randn(3, 16, 7, 7, device=device)
    g = torch.randn_like(x)
    runs = []
    for _ in range(2):
        state = {k: v.clone() for k, v in fused.state_dict().items()}
        runs.append(step(fused.train(), x, g))
        fused.load_state_dict(state)
    (y1, gx1, gp1), (y2, gx2, gp2) = runs
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2)
    assert all(torch.equal(gp1[k], gp2[k]) for k in gp1)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(training, device):
    """The whole module's gradient in x and every parameter against finite differences."""
    _, fused = module_pair(torch.float64, args=(8, 4), dilation_val=1, device=device)
    fused.train(training)
    names = [n for n, _ in fused.named_parameters()]
    x = torch.randn(3, 8, 3, 4, dtype=torch.float64, requires_grad=True, device=device)

    def fn(x, *params):
        y = torch.func.functional_call(fused, dict(zip(names, params)), (x,))
        assert isinstance(y.grad_fn, _FusedBAMFunction._backward_cls)
        return y

    inputs = (x, *[p.detach().clone().requires_grad_() for p in fused.parameters()])
    # fast_mode: random projections of the Jacobian, a few evaluations per input instead of one per element.
    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_create_graph_is_exact(device):
    """A gradient penalty through FusedBAM: the double backward matches eager's."""
    eager, fused = module_pair(torch.float64, device=device)
    x = torch.randn(3, 16, 4, 5, dtype=torch.float64, device=device)
    grads = []
    for module in (eager, fused):
        xi = x.clone().requires_grad_()
        y = module.train()(xi)
        (gx,) = torch.autograd.grad(y.square().sum(), xi, create_graph=True)
        assert gx.requires_grad
        module.zero_grad()
        (y.sum() + gx.pow(2).sum()).backward()
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def _fallback_case(change, device):
    """``change`` applied to eager BAM, FusedBAM and a float64 copy of eager; FusedBAM must take the
    per-op path and land as near the float64 run as eager does (output, every gradient, every buffer)."""
    eager, fused = module_pair(device=device)
    exact = float64_copy(eager)
    for module in (eager, fused, exact):
        change(module)
    x = torch.randn(3, 16, 5, 5, device=device)
    assert fused_path_blocker(fused, x) is not None
    g = torch.randn_like(x)
    want, got = (results(m.train(), x, g) for m in (eager, fused))
    assert_as_exact_as(got, want, results(exact.train(), x.double(), g.double()))
    xi = x.clone().requires_grad_()
    assert not isinstance(fused(xi).grad_fn, _FusedBAMFunction._backward_cls)


def test_fallback_for_hooks(device):
    seen = []
    _fallback_case(
        lambda m: m.spatial_att.gate_s.gate_s_conv_reduce0.register_forward_hook(lambda *a: seen.append(1)), device
    )
    assert len(seen) == 4  # every forward ran the hooked convolution: eager and its float64 copy once, FusedBAM twice


def test_fallback_for_sync_batch_norm(device):
    """After convert_sync_batchnorm the BNs are SyncBatchNorm: per-op path (eval here: SyncBatchNorm
    trains only under torch.distributed)."""
    eager, fused = module_pair(device=device)
    exact = float64_copy(eager).eval()
    fused = nn.SyncBatchNorm.convert_sync_batchnorm(fused).eval()
    x = torch.randn(2, 16, 4, 4, device=device)
    assert "SyncBatchNorm" in fused_path_blocker(fused, x)
    assert_as_exact_as(fused(x), eager.eval()(x), exact(x.double()), name="y")


def test_fallback_for_parameters_replaced_by_tensors(device):
    def replace(m):
        conv = m.spatial_att.gate_s.gate_s_conv_final
        weight = conv.weight.detach().clone()
        del conv.weight
        conv.weight = weight

    _fallback_case(replace, device)


def test_inference_runs_without_a_node(device):
    eager, fused = module_pair(device=device)
    exact = float64_copy(eager).eval()
    x = torch.randn(2, 16, 5, 5, device=device)
    with torch.no_grad():
        y = fused.eval()(x)
        assert y.grad_fn is None
        assert_as_exact_as(y, eager.eval()(x), exact(x.double()), name="y")


def test_forward_ad_and_torch_func_take_the_per_op_path(device):
    """Dual tensors and torch.func transforms see every op (the per-op path, whose gate runs the
    reference under backend="auto"): tangents and per-sample results as near a float64 eager BAM's
    as eager BAM's own."""
    import torch.autograd.forward_ad as fwAD

    eager, _ = module_pair(device=device)
    fused = FusedBAM(16, 4).to(device)  # backend="auto" (forced "triton" is a clear error here)
    fused.load_state_dict(eager.state_dict())
    exact = float64_copy(eager)
    for module in (eager, fused, exact):
        module.eval()
    x = torch.randn(3, 16, 5, 5, device=device)
    t = torch.randn_like(x)
    tangents = []
    for module, dtype in ((eager, torch.float32), (fused, torch.float32), (exact, torch.float64)):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(module(fwAD.make_dual(x.to(dtype), t.to(dtype)))).tangent)
    want, got, tangent64 = tangents
    assert got is not None
    assert_as_exact_as(got, want, tangent64, name="tangent")
    _, jvp_out = torch.func.jvp(fused, (x,), (t,))
    assert_as_exact_as(jvp_out, want, tangent64, name="jvp")
    per_sample = torch.func.vmap(lambda xi: fused(xi[None])[0])(x)
    assert_as_exact_as(per_sample, eager(x), exact(x.double()), name="vmap")


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_gradient_whose_hw_do_not_collapse(channels_last, device):
    """A g whose (h, w) share no single stride (W-major) reaches the gate's and input_grad's
    kernels through one copy laid out like x: as near the float64 run as eager BAM."""
    eager, fused = module_pair(device=device)
    exact = float64_copy(eager)
    x = torch.randn(3, 16, 5, 6, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    g = torch.randn(3, 16, 6, 5, device=device).transpose(2, 3)
    assert hw_strides(g) is None and fused_path_blocker(fused.train(), x) is None
    got = results(fused.train(), x, g)
    assert_as_exact_as(got, results(eager.train(), x, g), results(exact.train(), x.double(), g.double()))


def test_expanded_gradient_is_read_by_its_strides(device):
    """y.sum() hands the backward a stride-0 g: the kernels read it as it is, as near the float64
    gradients as the same step with a dense g."""
    eager, fused = module_pair(device=device)
    exact = float64_copy(eager)
    x = torch.randn(3, 16, 5, 6, device=device).contiguous(memory_format=torch.channels_last)
    ones = torch.ones_like(x)
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    expanded = results(fused.train(), x, torch.ones(1, device=device).expand(x.shape))
    fused.load_state_dict(state)
    dense = results(fused, x, ones)
    assert_as_exact_as(expanded, dense, results(exact.train(), x.double(), ones.double()))
