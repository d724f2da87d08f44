"""Memory: what the fused gate keeps for backward, and the ResNet-50+BAM step's peak, fused vs eager.

The fused op saves x, mc and ms — tensors the network holds anyway — and no full-size tensor
of its own; eager gates save their broadcast sums and sigmoids. Over a training step that is
the difference in peak memory the benchmarks report.
"""

import pytest
import torch

from bam_fused import reference
from bam_fused.common import RESNET50_BAM_SHAPES
from benchmarks.providers import gate_fused, gate_inputs, gate_released, resnet_model, resnet_step
from benchmarks.timing import peak_memory
from gpu_common import DEVICE, ON_GPU, record

pytestmark = pytest.mark.gpu


def _saved_storages(fn, *inputs) -> dict:
    """{storage data_ptr: nbytes} of every tensor autograd saves while ``fn(*inputs)`` runs."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return saved


def _reference_gate(x, mc, ms):
    n, c, h, w = x.shape
    return reference.bam_gate(x, mc.view(n, c), ms.view(n, h, w), "product", True)


def test_fused_gate_saves_only_its_inputs():
    shape = RESNET50_BAM_SHAPES[0] if ON_GPU else (2, 16, 6, 6)
    x, mc, ms, _ = gate_inputs(shape, "bf16", "channels_last", DEVICE, requires_grad=True)
    inputs = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (x, mc, ms)}
    fused = _saved_storages(gate_fused, x, mc, ms)
    eager = _saved_storages(gate_released, x, mc, ms)
    ref = _saved_storages(_reference_gate, x, mc, ms)
    extra = lambda saved: sum(b for p, b in saved.items() if p not in inputs)
    record(
        "memory/saved_for_backward",
        shape=list(shape),
        dtype="bf16",
        input_bytes=sum(inputs.values()),
        fused_extra_bytes=extra(fused),
        eager_released_extra_bytes=extra(eager),
        reference_extra_bytes=extra(ref),
        fused_saved_storages=len(fused),
    )
    assert set(fused) <= set(inputs), "the fused gate saved a tensor that is not x, mc or ms"
    assert extra(eager) > 0, "probe sanity: the eager gate must save tensors of its own"


def test_resnet50_step_peak_memory_fused_below_eager():
    if not ON_GPU:
        pytest.skip("peak memory needs CUDA's allocator statistics")
    try:
        models = {p: resnet_model(p, 50, DEVICE) for p in ("eager", "fused")}
    except ImportError as e:
        pytest.skip(f"bam_fused.models.resnet_bam is not available: {e}")
    peaks = {}
    for p, model in models.items():
        models[p] = None  # one model on the device at a time
        step = resnet_step(model, 64, 224, DEVICE)
        for _ in range(2):
            step()
        peaks[p] = peak_memory(step, DEVICE)
        del model, step
        torch.cuda.empty_cache()
    (eager_step, eager_abs), (fused_step, fused_abs) = peaks["eager"], peaks["fused"]
    record(
        "memory/resnet50_step",
        batch=64,
        image=224,
        dtype="bf16 autocast",
        eager_peak_bytes=eager_abs,
        fused_peak_bytes=fused_abs,
        eager_step_peak_bytes=eager_step,
        fused_step_peak_bytes=fused_step,
        saved_bytes=eager_abs - fused_abs,
    )
    assert fused_abs < eager_abs, f"FusedBAM peak {fused_abs} B is not below eager BAM's {eager_abs} B"
