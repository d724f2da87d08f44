"""CUDA graphs as users capture them, around FusedBAM's fused path; each graph replayed for three
training steps against the same steps run eagerly, in float64 (every result compared to float64
rounding, TF32 and nondeterministic cuDNN algorithms off):

- ``torch.cuda.make_graphed_callables`` on a FusedBAM, against eager BAM;
- a whole training step of a small ResNet+BAM (CIFAR stem, a FusedBAM after layer1..3: forward,
  loss, backward and SGD step) captured with ``torch.cuda.graph``, against the same model with
  eager BAM;
- ``torch.compile(mode="reduce-overhead")`` of a FusedBAM: inductor's CUDA graphs around the
  ``bam_fused::module`` ops, none skipped, against eager BAM.

They need a CUDA device; on CPU tests/test_compile_path.py checks what a capture needs of the
fused path (no value read back on the host, nothing sized by values).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bam_fused import BAM, FusedBAM
from bam_fused.models import resnet_bam
from gpu_common import DEVICE, ON_GPU, record

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")]

TOL64 = {"atol": 1e-9, "rtol": 1e-9}
STEPS = 3
SHAPE = (8, 64, 14, 14)


@pytest.fixture(autouse=True)
def _exact_cuda():
    """fp64 needs no TF32 switch, but deterministic cuDNN keeps graph and eager on the same algorithms."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch._dynamo.reset()
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    torch._dynamo.reset()


def _randomized(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that eval mode is a real test."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return module


def _twins(channels: int = SHAPE[1]):
    """(eager BAM, FusedBAM) in float64 on the GPU with the same weights and statistics."""
    eager = _randomized(BAM(channels, 8)).to(DEVICE, torch.float64).train()
    fused = FusedBAM(channels, 8, backend="triton").to(DEVICE, torch.float64).train()
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def _step(module, x, g) -> list:
    """A forward and backward: y, x's gradient, every parameter's gradient and every buffer, as
    copies (a graph's outputs are overwritten by its next replay)."""
    module.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    y = module(xi)
    y.backward(g)
    return [t.detach().clone() for t in (y, xi.grad, *(p.grad for p in module.parameters()), *module.buffers())]


def _inputs():
    return (torch.randn(SHAPE, device=DEVICE, dtype=torch.float64) for _ in range(2))


def _assert_same(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m, i=i: f"{what}, tensor {i}: {m}")


def test_make_graphed_callables_on_fused_bam():
    eager, fused = _twins()
    sample = torch.randn(SHAPE, device=DEVICE, dtype=torch.float64, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(fused, (sample,))
    # Its warm-up ran the module eagerly (statistics updated, batches counted): eager starts there.
    eager.load_state_dict(fused.state_dict())
    for step in range(STEPS):
        x, g = _inputs()
        _assert_same(_step(graphed, x, g), _step(eager, x, g), f"make_graphed_callables, step {step}")
    record("cuda_graphs/make_graphed_callables", shape=list(SHAPE), steps=STEPS, dtype="fp64")


def _train_step(model, opt, x, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    opt.step()
    return loss


def test_captured_resnet_bam_training_step():
    """The whole-network capture of PyTorch's CUDA-graph notes: warm-up on a side stream, then
    forward, loss, backward and optimizer step in one graph, replayed on new batches."""
    torch.manual_seed(0)
    kwargs = {"network_type": "CIFAR10", "num_classes": 10}
    model = resnet_bam(18, attention="fused", backend="triton", **kwargs).to(DEVICE, torch.float64).train()
    twin = resnet_bam(18, attention="bam", **kwargs).to(DEVICE, torch.float64).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = lambda: (
        torch.randn(8, 3, 32, 32, device=DEVICE, dtype=torch.float64),
        torch.randint(0, 10, (8,), device=DEVICE),
    )
    static_x, static_labels = batch()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _train_step(model, opt, static_x, static_labels)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = F.cross_entropy(model(static_x), static_labels)
        static_loss.backward()
        opt.step()
    # The eager twin takes the captured model's state as the capture left it (weights, statistics,
    # momentum buffers); the state_dicts share their keys (FusedBAM has BAM's submodules).
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    twin_opt.load_state_dict(opt.state_dict())
    losses = []
    for step in range(STEPS):
        x, labels = batch()
        static_x.copy_(x)
        static_labels.copy_(labels)
        graph.replay()
        want = _train_step(twin, twin_opt, x, labels)
        losses.append(static_loss.item())
        torch.testing.assert_close(static_loss, want, **TOL64, msg=lambda m, s=step: f"loss, step {s}: {m}")
        got_state, want_state = model.state_dict(), twin.state_dict()
        _assert_same(list(got_state.values()), list(want_state.values()), f"ResNet-18+BAM state, step {step}")
    record("cuda_graphs/resnet18_bam_step", batch=8, image=32, steps=STEPS, dtype="fp64", losses=losses)


def test_reduce_overhead_compiled_fused_bam():
    """torch.compile(mode="reduce-overhead"): the compiled module's graphs (the bam_fused::module
    ops) recorded as CUDA graphs, none skipped, no recompile, eager BAM's numbers."""
    from torch._dynamo.utils import counters

    eager, fused = _twins()
    counters.clear()
    compiled = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
    # Three steps to warm up and record (cudagraph trees record on a later call), then the compared ones.
    for step in range(3 + STEPS):
        x, g = _inputs()
        torch.compiler.cudagraph_mark_step_begin()
        got, want = _step(compiled, x, g), _step(eager, x, g)
        _assert_same(got, want, f"reduce-overhead, step {step}")
    skips = counters["inductor"]["cudagraph_skips"]
    recorded = counters["inductor"]["cudagraph_recorded_non_static_inputs"]
    graphs = counters["stats"]["unique_graphs"]
    record("cuda_graphs/reduce_overhead", shape=list(SHAPE), skips=skips, recorded_inputs=recorded, graphs=graphs)
    assert skips == 0, "inductor skipped CUDA graphs (TORCH_LOGS=perf_hints says why)"
    assert recorded > 0, "no CUDA graph was recorded"
    assert graphs == 1, f"{graphs} graphs compiled for one module in one mode"
