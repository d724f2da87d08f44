"""A ResNet-50 training step: ImageNet stem, bf16 autocast, channels_last, SGD with momentum.

Under --quick: ResNet-18 in fp32 on 2 images of 32², which CPUs get through in seconds.

Providers (benchmarks/providers.py): no attention, the released code's BAM, eager BAM, FusedBAM,
eager BAM compiled, FusedBAM compiled (and under reduce-overhead); all BAM providers hold the same
weights, and each one's first step must give the released provider's loss before anything is
timed. Then, in priority order (a cut-off run keeps the first):

1. the step in eager mode, providers interleaved round robin, one sample per step
   (``extra.samples_ms``), and its peak memory (``peak_mem_bytes``: above what was allocated
   when the step began; ``extra.peak_mem_abs_bytes`` also holds the other providers' models);
2. the same steps captured in a CUDA graph per provider (device time; not the reduce-overhead
   one, which replays graphs of its own);
3. a profiler pass per provider (``extra.profile`` of the eager record: kernel-busy time, host
   enqueue time, top host ops).
"""

import pytest
import torch
import torch.nn.functional as F

from bam_fused.common import DTYPES
from exact import FLOOR, assert_error_within, relative_errors

from . import cases
from .providers import SELF_GRAPHED, resnet_batches, resnet_model, resnet_steps, resnet_weights
from .timing import compare_eager, compare_graphs, cycling, peak_memory, profile_steps, steps_body

# A loss agrees less closely than one BAM's output: train-mode BNs deep in the net normalise
# over few values (2 at layer4 of the quick run) and amplify the providers' rounding differences.
LOSS_RTOL_FLOOR = 1e-2
# A step moves gigabytes of activations, so no batch stays in L2 whatever their number: two sets
# give the graph the same rotation as every other level at the least cost.
INPUT_SETS = 2


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.resnet_cases(metafunc.config.getoption("--quick")), ids=str)


def test_resnet_step(case, device, compile_mode, results):
    state = resnet_weights(case.depth)
    models = {p: resnet_model(p, case.depth, device, compile_mode, state) for p in case.providers}
    batches = resnet_batches(case.batch, case.image, device, INPUT_SETS)
    steps = {p: resnet_steps(m, batches, device, case.dtype) for p, m in models.items()}
    # The first step of each: the same weights and batch, so every BAM provider's loss must be as near
    # a float64 run of the eager model as the released code's is (tests/exact.py's policy, with the
    # floor above); cuDNN plans, Triton JIT and torch.compile happen here too.
    images, labels = batches[0]
    exact_model = resnet_model("eager", case.depth, device, state=state).double()
    with torch.no_grad():
        exact = F.cross_entropy(exact_model(images.double()), labels).cpu()
    del exact_model
    losses = {p: s[0]().item() for p, s in steps.items()}
    floor = max(FLOOR[DTYPES[case.dtype]], LOSS_RTOL_FLOOR)
    for p, loss in losses.items():
        if p != "none":
            loss_errors = relative_errors(torch.tensor(loss), torch.tensor(losses["released"]), exact)
            what = f"{case} {p}: loss {loss}, released {losses['released']}, float64 {exact.item()}"
            assert_error_within(*loss_errors, DTYPES[case.dtype], what, floor)
    for provider_steps in steps.values():  # the optimizer's momentum buffers; plans for the second batch
        for _ in range(case.sampling.warmup):
            steps_body(provider_steps)()
    peaks = {p: peak_memory(s[0], device) for p, s in steps.items()}
    extra = lambda p: {"depth": case.depth, "optimizer": "SGD(0.9)", "input_sets": INPUT_SETS, "first_loss": losses[p]}
    records = {
        p: results.add_case(
            case, p, "eager", t, peak_mem_bytes=peaks[p][0], extra={**extra(p), "peak_mem_abs_bytes": peaks[p][1]}
        )
        for p, t in compare_eager(steps, device, case.sampling).items()
    }

    # The very steps timed above, captured: same modules, optimizer and input sets (a provider
    # replaying CUDA graphs of its own is not captured again).
    bodies = {p: lambda s=s: steps_body(s) for p, s in steps.items() if p not in SELF_GRAPHED}
    timings, captured, errors = compare_graphs(bodies, INPUT_SETS, device, case.sampling)
    for p, t in timings.items():
        results.add_case(case, p, "cuda_graph", t, extra={**extra(p), "captured": captured})

    for p, record in records.items():
        record["extra"]["profile"] = profile_steps(cycling(steps[p]), device, case.sampling.profile_steps)
        results.write()
    if errors:
        pytest.fail(f"{case}: CUDA-graph capture failed for {errors}")
