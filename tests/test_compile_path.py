"""FusedBAM under torch.compile, and what a CUDA-graph capture needs of its fused path, on CPU.

Compiled, FusedBAM's forward traces the fused path's check (``fused_path.traced_fused_call``:
the compiled code guards on what it reads) and records the whole module as the
``bam_fused::module`` / ``module_backward`` custom ops, which launch the same eight-pass kernels
as the eager path; where the check names a reason the per-op path is traced instead. The kernels
run here through Triton's interpreter, so their launches from inside the compiled graphs are
counted. float64 results are compared with eager BAM directly (to float64 rounding); under
autocast the compiled module must give exactly what the eager FusedBAM gives (the same kernels
on the same tensors).
"""

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction

from bam_fused import preflight
from bam_fused.fused_bam import fused_bam, meta_call
from bam_fused.fused_op import _module_backward_op, _module_op, op_args
from bam_fused.fused_path import plan_fused_call
from bam_fused.kernels import layout
from bam_fused.kernels.layout import captured_launches
from exact import TOL64, module_pair

SHAPE = (3, 16, 5, 6)
# The kernels' full-size operands over one forward+backward: pool_reduce reads x; the gate reads
# x, writes y; stage one reads g, x; input_grad reads g, x, writes gx.
PASSES = 8


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _twins(dtype=torch.float64, momentum=0.1, **kwargs):
    """(eager BAM, FusedBAM) with the same non-trivial weights and running statistics."""
    eager, fused = module_pair(dtype, dilation_val=2, **kwargs)
    for module in (eager, fused):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = momentum
    return eager, fused


class _Launches:
    """Every interpreted launch while active: (kernel name, how many of its tensors have x's size)."""

    def __init__(self, monkeypatch, numel: int):
        self.got = []
        run = InterpretedFunction.run

        def recorded(kernel, *args, **kwargs):
            full = sum(isinstance(a, torch.Tensor) and a.numel() == numel for a in (*args, *kwargs.values()))
            self.got.append((kernel.fn.__name__, full))
            return run(kernel, *args, **kwargs)

        monkeypatch.setattr(InterpretedFunction, "run", recorded)

    def take(self) -> list:
        got, self.got = self.got, []
        return got


def _step(module, x, g, autocast=None):
    """One forward and backward: y, x's gradient, then every parameter's gradient and buffer."""
    module.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = module(xi)
    y.backward(g.to(y.dtype))
    tensors = [p.grad for p in module.parameters()] + [b.clone() for b in module.buffers()]
    return [y.detach(), xi.grad, *tensors]


def _inputs(layout=torch.contiguous_format, dtype=torch.float64):
    x = torch.randn(SHAPE, dtype=dtype).contiguous(memory_format=layout) * 2
    return x, torch.randn(SHAPE, dtype=dtype).contiguous(memory_format=layout)


def _graph_code(counter) -> str:
    return "\n".join(gm.code for gm in counter.graphs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, layout, momentum",
    [("paper", torch.contiguous_format, 0.1), ("official", torch.channels_last, None)],
    ids=["paper-nchw", "official-channels_last-momentum_none"],
)
def test_compiled_runs_the_fused_kernels_to_eager_numbers(variant, layout, momentum, monkeypatch):
    """Three training steps and an eval step through torch.compile(fullgraph=True) with inductor:
    every launch is the eager FusedBAM's, eight full-size passes a step, and every output,
    gradient and buffer is eager BAM's to float64 rounding; one graph per mode, no recompile."""
    eager, fused = _twins(momentum=momentum, variant=variant)
    twin = copy.deepcopy(fused)  # the eager FusedBAM: the launches to expect
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(fused, fullgraph=True, backend=counter)
    launches = _Launches(monkeypatch, torch.Size(SHAPE).numel())
    for step, training in enumerate((True, True, True, False)):
        x, g = _inputs(layout)
        want = _step(eager.train(training), x, g)
        _step(twin.train(training), x, g)
        expected = launches.take()
        got = _step(compiled.train(training), x, g)
        assert launches.take() == expected, f"step {step}"
        assert sum(full for _, full in expected) == PASSES, expected
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            torch.testing.assert_close(a, b, **TOL64, msg=lambda m, i=i, s=step: f"step {s}, tensor {i}: {m}")
        assert counter.frame_count == (1 if training else 2), f"step {step}: recompiled"
    code = _graph_code(counter)
    assert "bam_fused.module" in code and "bam_fused.gate" not in code


@pytest.mark.slow
def test_compiled_under_autocast_is_the_eager_fused_path():
    """float32 weights, bf16 autocast, channels_last: the compiled module computes exactly what the
    eager FusedBAM computes (the same kernels and aten calls on the same tensors), train and eval.
    How close that is to eager BAM is tests/test_fused_module.py's to check."""
    _, fused = _twins(torch.float32)
    twin = copy.deepcopy(fused)
    compiled = torch.compile(fused, fullgraph=True)
    for training in (True, True, False):
        x, g = _inputs(torch.channels_last, torch.float32)
        assert _call(twin.train(training), x, torch.bfloat16).branch_dtype == torch.bfloat16
        want = _step(twin, x, g, torch.bfloat16)
        got = _step(compiled.train(training), x, g, torch.bfloat16)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert torch.equal(a, b), f"training={training}, tensor {i}"


def _call(fused, x, autocast=None):
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        return plan_fused_call(fused, x)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["train", "eval-momentum_none-autocast"])
def test_opcheck(case):
    """Both ops pass torch.library.opcheck: schema, autograd registration, fake tensors, AOT
    dispatch with dynamic shapes."""
    train = case == "train"
    dtype = torch.float64 if train else torch.float32
    _, fused = _twins(dtype, momentum=0.1 if train else None)
    fused.train(train)
    x, g = _inputs(torch.contiguous_format if train else torch.channels_last, dtype)
    call = _call(fused, x, None if train else torch.bfloat16)
    args = (x.requires_grad_(), list(call.params), list(call.running), list(call.counts), *op_args(call))
    torch.library.opcheck(_module_op, args)
    y, *rest = _module_op(*args)
    saved = rest[sum(m.update for m in call.bns if m.running) * 2 :]
    # (The backward op runs where nothing records gradients: a create_graph backward takes another route.)
    params = [p.detach() for p in call.params]
    torch.library.opcheck(_module_backward_op, (g, x.detach(), params, saved, *op_args(call)))


def _changed(change, eager, fused):
    for module in (eager, fused):
        torch.manual_seed(1)
        change(module)


def _hook(m):
    m.spatial_att.gate_s.gate_s_conv_final.register_forward_hook(lambda mod, i, o: o * 2)


def _silu(m):
    m.channel_att.gate_c.gate_c_relu_1 = nn.SiLU()


def _instance_forward(m):
    m.spatial_att.gate_s.gate_s_bn_reduce0.forward = lambda t: 2 * t


@pytest.mark.slow
@pytest.mark.parametrize("change", [_hook, _silu, _instance_forward], ids=["hook", "layer replaced", "own forward"])
def test_a_change_after_compiling_recompiles_onto_the_per_op_path(change, monkeypatch):
    """A module changed after it was compiled is checked again at the next call (the compiled code
    guards on what the check read): the per-op path is traced, with eager BAM's numbers."""
    eager, fused = _twins()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fused, fullgraph=True, backend=counter)
    launches = _Launches(monkeypatch, torch.Size(SHAPE).numel())
    x, g = _inputs()
    _step(eager, x, g)
    _step(compiled, x, g)
    assert "pool_reduce_kernel" in {name for name, _ in launches.take()}
    _changed(change, eager, fused)
    want, got = _step(eager, x, g), _step(compiled, x, g)
    assert counter.frame_count == 2
    assert "pool_reduce_kernel" not in {name for name, _ in launches.take()}, "the fused path ran"
    assert "bam_fused.gate" in counter.graphs[-1].code
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m, i=i: f"tensor {i}: {m}")


@pytest.mark.slow
def test_a_kernel_the_gpu_cannot_run_compiles_to_the_per_op_path(monkeypatch):
    """The pre-flight check runs while tracing (x's sizes are static there): a kernel that does not
    load on the device sends the compiled module down the per-op path, with the eager path's
    warning, to eager BAM's numbers."""
    import triton

    real = layout.load_launch

    def load(kernel, args, kwargs, device):
        if kernel.__name__ == "input_grad_kernel":
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
        real(kernel, args, kwargs, device)

    monkeypatch.setattr(preflight, "load_launch", load)
    monkeypatch.setattr(preflight, "_answers", {})
    monkeypatch.setattr(preflight, "_warned", set())
    eager, fused = _twins()
    fused.gate_backend = "auto"  # (under "triton" it raises, as the eager path does)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fused, fullgraph=True, backend=counter)
    x, g = _inputs()
    with pytest.warns(RuntimeWarning, match=r"input_grad_kernel cannot run on cpu for x \(3, 16, 5, 6\)"):
        got = _step(compiled, x, g)
    want = _step(eager, x, g)
    assert "bam_fused.gate" in counter.graphs[0].code and "bam_fused.module" not in counter.graphs[0].code
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m, i=i: f"tensor {i}: {m}")


# Ops whose result a host must wait for (a value read back) or whose output size depends on
# values: neither can be captured in a CUDA graph.
_UNCAPTURABLE = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)


class _HostReads(TorchDispatchMode):
    """The aten calls outside kernel launches tagged in _UNCAPTURABLE (the interpreter's own
    calls inside a launch are not the path's)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.found, self.launching = [], 0
        run = InterpretedFunction.run

        def paused(kernel, *args, **kwargs):
            self.launching += 1
            try:
                return run(kernel, *args, **kwargs)
            finally:
                self.launching -= 1

        monkeypatch.setattr(InterpretedFunction, "run", paused)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.launching and any(tag in func.tags for tag in _UNCAPTURABLE):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_the_fused_path_reads_no_value_on_the_host(variant, momentum, monkeypatch):
    """What a CUDA graph capture of a FusedBAM training step needs: no host synchronisation and no
    allocation sized by values. A dispatch trace of two training steps and an eval step (the path
    check included, momentum=None's cumulative average too) finds no call that reads a value back
    or sizes its output by values, where eager BAM with momentum=None does (float(num_batches_tracked));
    and the fused path's forward and backward run on meta tensors, which hold no values at all."""
    eager, fused = _twins(torch.float32, momentum=momentum, variant=variant)
    reads = _HostReads(monkeypatch)
    for module, found in ((fused, []), (eager, ["aten._local_scalar_dense.default"] if momentum is None else [])):
        for training in (True, True, False):
            x, g = _inputs(dtype=torch.float32)
            with reads:
                _step(module.train(training), x, g)
            assert sorted(set(reads.found)) == (found if training else []), (type(module).__name__, training)
            reads.found.clear()
    x = torch.empty(SHAPE, device="meta", requires_grad=True)
    with captured_launches() as launches:
        y = fused_bam(x, meta_call(plan_fused_call(fused.train().to("meta"), x)))
        y.backward(torch.empty_like(y))
    assert len(launches) == 8 and x.grad.device.type == "meta"
