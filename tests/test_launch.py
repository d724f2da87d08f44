"""Every launch as a GPU would make it: float scalars typed as the math needs, on x's device, and a
kernel that cannot run on the GPU found before anything runs (a warning and the per-op path, or an
error under backend="triton")."""

import ast
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from bam_fused import bam_gate, preflight, reference
from bam_fused.fused_bam import _FusedBAMFunction, fused_bam
from bam_fused.fused_path import fused_path_blocker, plan_fused_call
from bam_fused.kernels import layout
from exact import TOL64, module_pair

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def _pair(dtype=torch.float64, backend="auto", **kwargs):
    return module_pair(dtype, backend=backend, **kwargs)


def _steps_agree(eager, fused, x, steps=(True, True, False)):
    """Train, train, eval: outputs, x's and every parameter's gradient and every buffer, fp64 to 1e-9."""
    for training in steps:
        results = []
        for module in (eager, fused):
            module.train(training).zero_grad()
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.backward(torch.ones_like(y) * 0.3)
            results.append([y, xi.grad, *(p.grad for p in module.parameters()), *module.buffers()])
        for want, got in zip(*results, strict=True):
            torch.testing.assert_close(got, want, **TOL64)


def _float_args(kernel, args, kwargs):
    """(parameter, value) of every Python float a launch passes."""
    names = list(inspect.signature(kernel.fn).parameters)
    bound = dict(zip(names, args)) | kwargs
    return [(name, v) for name, v in bound.items() if isinstance(v, float)]


def _annotated_fp64(kernel, name) -> bool:
    return inspect.signature(kernel.fn).parameters[name].annotation is tl.float64


def test_every_float_scalar_of_a_float64_step_is_typed_float64():
    """A compiled kernel takes an unannotated Python float as fp32 (the interpreter keeps fp64): every
    float a FusedBAM training step or a gate call passes must be declared float64 in its kernel."""
    _, fused = _pair()
    for bn in fused.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.momentum = None  # 1 / (n + 1): not an fp32 value
    x = torch.randn(3, 16, 5, 6, dtype=torch.float64)
    with layout.captured_launches() as launches:
        fused_bam(x.requires_grad_(), plan_fused_call(fused, x)).sum().backward()
        bam_gate(x, torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 5, 6, dtype=torch.float64)).sum()
    floats = [(k, name) for k, args, kwargs in launches for name, _ in _float_args(k, args, kwargs)]
    assert floats, "the step passes BatchNorm eps and momentum"
    assert all(_annotated_fp64(k, name) for k, name in floats), floats


@pytest.fixture
def gpu_scalar_narrowing(monkeypatch):
    """Interpreted launches take float arguments as a compiled kernel does: fp32 unless declared float64."""
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        names = list(params)

        def typed(name, v):
            return float(np.float32(v)) if isinstance(v, float) and params[name].annotation is not tl.float64 else v

        args = [typed(n, v) for n, v in zip(names, args)]
        kwargs = {k: typed(k, v) for k, v in kwargs.items()}
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)


# momentum=None's factor, 1 / num_batches_tracked, is computed on the device; 1/7 is the kernels' scalar.
@pytest.mark.parametrize("momentum", [0.1, 1 / 7, None])
def test_float64_module_as_a_gpu_would_type_its_scalars(momentum, gpu_scalar_narrowing):
    """With scalars narrowed where a GPU narrows them, float64 still matches eager to 1e-9."""
    eager, fused = _pair()
    _cumulative_average_after_six_batches(eager, fused, momentum)
    _steps_agree(eager, fused, torch.randn(3, 16, 5, 6, dtype=torch.float64))


def _cumulative_average_after_six_batches(eager, fused, momentum):
    """Every BatchNorm with ``momentum`` (None: 1/7, then 1/8) and 6 batches counted."""
    for module in (eager, fused):
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.momentum = momentum
                bn.num_batches_tracked.fill_(6)


def test_the_narrowing_check_has_teeth(monkeypatch):
    """The same comparison fails when every float is narrowed (as an undeclared scalar would be): a
    momentum of 1/7, no fp32 value."""
    original = InterpretedFunction.run

    def narrowed(v):
        return float(np.float32(v)) if isinstance(v, float) else v

    def run(self, *args, grid, warmup, **kwargs):
        args = [narrowed(v) for v in args]
        kwargs = {k: narrowed(v) for k, v in kwargs.items()}
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    eager, fused = _pair()
    _cumulative_average_after_six_batches(eager, fused, 1 / 7)
    with pytest.raises(AssertionError):
        _steps_agree(eager, fused, torch.randn(3, 16, 5, 6, dtype=torch.float64))


def test_a_compiled_launch_runs_on_its_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: the guard makes x's device current where it is not."""

    def kernel(x_ptr):
        pass

    compiled = JITFunction(kernel)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = layout.launch_guard(compiled, torch.device("cuda", 1))
    assert isinstance(guard, layout._OnDevice) and guard.device.idx == 1 and guard.kernel is compiled
    same = layout.launch_guard(compiled, torch.device("cuda", 0))
    with same as launch:
        assert launch is compiled
    with pytest.raises(layout.CompiledForGPU, match="TRITON_INTERPRET=1 must be set"):
        layout.launch_guard(compiled, torch.device("cpu"))


def test_every_launch_goes_through_the_guard():
    """Each ``kernel[grid](...)`` in kernels/ is ``launch[grid](...)`` inside ``with launch_guard(kernel,
    device) as launch``: the device guard, the interpreter's lock and the launch capture all apply."""
    launches = guarded = 0
    for path in KERNELS.glob("*.py"):
        tree = ast.parse(path.read_text())
        jitted = {
            f.name
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in f.decorator_list)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                target = ast.unparse(node.func.value)
                assert target not in jitted, f"{path.name}: {target}[...] launched outside launch_guard"
                if target == "launch":
                    launches += 1
            if isinstance(node, ast.With):
                for item in node.items:
                    call = item.context_expr
                    if isinstance(call, ast.Call) and ast.unparse(call.func) == "launch_guard":
                        assert ast.unparse(item.optional_vars) == "launch", path.name
                        assert ast.unparse(call.args[0]) in jitted, path.name
                        guarded += 1
    assert launches == guarded >= 8


def _fail_loading(monkeypatch, kernel_name: str):
    """load_launch raises for ``kernel_name`` as Triton does for a kernel a GPU cannot hold; counts loads."""
    loads = []
    real = layout.load_launch

    def load(kernel, args, kwargs, device):
        loads.append(kernel.__name__)
        if kernel.__name__ == kernel_name:
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
        real(kernel, args, kwargs, device)

    monkeypatch.setattr(preflight, "load_launch", load)
    monkeypatch.setattr(preflight, "_answers", {})
    monkeypatch.setattr(preflight, "_warned", set())
    return loads


@pytest.mark.parametrize("kernel_name", ["channel_mlp_bwd_kernel", "input_grad_kernel", "pool_reduce_kernel"])
def test_a_kernel_the_gpu_cannot_run_sends_its_configuration_the_per_op_way(kernel_name, monkeypatch):
    """Found before anything runs (no statistic moved twice), one warning naming the kernel, then the
    per-op path for that configuration, to eager's numbers; another configuration still fuses."""
    loads = _fail_loading(monkeypatch, kernel_name)
    eager, fused = _pair()
    x = torch.randn(3, 16, 5, 6, dtype=torch.float64)
    message = rf"{kernel_name} cannot run on cpu for x \(3, 16, 5, 6\) torch.float64 .*OutOfResources.*per-op path"
    with pytest.warns(RuntimeWarning, match=message):
        reason = fused_path_blocker(fused, x)
    assert kernel_name in reason
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        _steps_agree(eager, fused, x)
        y = fused(x.clone().requires_grad_())
    assert not [w for w in again if "cannot run" in str(w.message)]  # once per configuration
    assert not isinstance(y.grad_fn, _FusedBAMFunction._backward_cls)
    assert loads.count(kernel_name) == 2  # train and eval mode: two configurations (one warning)
    other = torch.randn(4, 16, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(preflight, "load_launch", lambda *a: None)
    assert fused_path_blocker(fused, other) is None


def test_under_backend_triton_it_raises(monkeypatch):
    _fail_loading(monkeypatch, "channel_mlp_fwd_kernel")
    _, fused = _pair(backend="triton")
    x = torch.randn(3, 16, 5, 6, dtype=torch.float64)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    with pytest.raises(RuntimeError, match="channel_mlp_fwd_kernel cannot run on cpu"):
        fused(x)
    assert all(torch.equal(v, before[k]) for k, v in fused.state_dict().items())


def test_a_gate_kernel_the_gpu_cannot_run_falls_back_to_the_reference(monkeypatch):
    _fail_loading(monkeypatch, "gate_bwd_kernel")
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    mc, ms = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="gate_bwd_kernel cannot run .*reference gate"):
        y = bam_gate(x, mc, ms)
    torch.testing.assert_close(y, reference.bam_gate(x, mc, ms), atol=0, rtol=0)  # the reference itself
    with pytest.raises(RuntimeError, match="gate_bwd_kernel cannot run on cpu"):
        bam_gate(x, mc, ms, backend="triton")
