"""The whole BAM module, forward+backward in train mode: released vs eager BAM vs FusedBAM vs compiled BAM
vs compiled FusedBAM (its whole-module ops; and under reduce-overhead, in inductor's CUDA graphs).

Every provider holds the same weights and computes the released code's BAM (providers.BENCH_VARIANT);
each is checked against the authors' formula (``bam_fused.BAM(variant="official")`` on the same
weights, under the same autocast) before it is timed. bf16/fp16 cases run under autocast with fp32 weights,
as a mixed-precision training step does. Both modes, interleaved, and a profiler pass per provider.
"""

import pytest
import torch

from bam_fused import BAM
from bam_fused.common import DTYPES, LAYOUTS
from exact import assert_as_exact_as, float64_copy

from . import cases
from .providers import BENCH_VARIANT, SELF_GRAPHED, autocast_for, bam_module, input_set_count, module_steps
from .timing import compare_eager, compare_graphs, cycling, peak_memory, profile_steps, steps_body


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.module_cases(metafunc.config.getoption("--quick")), ids=str)


def check_module(provider: str, module, state: dict, x, dtype: str) -> None:
    """``module`` (train mode) on x (N, C, H, W) under autocast ``dtype`` must land as near a float64
    run of ``BAM(variant=BENCH_VARIANT)`` holding ``state`` as that BAM does under the same autocast:
    the authors' formula, computed independently (tests/exact.py's policy: rounding in another order
    passes, another formula does not)."""
    want_module = BAM(x.shape[1], variant=BENCH_VARIANT)
    want_module.load_state_dict(state, strict=True)
    want_module = want_module.to(x.device).train()
    exact_module = float64_copy(want_module)
    with torch.no_grad():
        exact = exact_module(x.double())
    with autocast_for(dtype, x.device):
        with torch.no_grad():
            want = want_module(x)
        # With autograd on, as the timed steps run it: a compiled module compiles its training graph once.
        got = module(x).detach()
    assert_as_exact_as(got, want, exact, DTYPES[dtype], name=provider)


def test_bam_module(case, device, compile_mode, results):
    channels = case.shape[1]
    state = BAM(channels, variant=BENCH_VARIANT).state_dict()
    modules = {p: bam_module(p, channels, device, compile_mode, case.layout, state) for p in case.providers}
    dt, fmt = DTYPES[case.dtype], LAYOUTS[case.layout]
    n_sets = input_set_count(2 * torch.Size(case.shape).numel() * dt.itemsize, device)
    sets = [
        tuple(
            torch.randn(case.shape, device=device, dtype=dt).contiguous(memory_format=fmt).requires_grad_(rg)
            for rg in (True, False)
        )
        for _ in range(n_sets)
    ]
    for p, module in modules.items():
        check_module(p, module, state, sets[0][0], case.dtype)
    steps = {p: module_steps(m, sets, case.dtype, device) for p, m in modules.items()}
    for provider_steps in steps.values():
        for _ in range(case.sampling.warmup):
            steps_body(provider_steps)()
    peaks = {p: peak_memory(s[0], device)[0] for p, s in steps.items()}
    extra = {"input_sets": n_sets, "variant": BENCH_VARIANT}
    records = {
        p: results.add_case(case, p, "eager", t, peak_mem_bytes=peaks[p], extra=extra)
        for p, t in compare_eager(steps, device, case.sampling).items()
    }

    # The very steps timed above, captured: same modules, optimizer and input sets (a provider
    # replaying CUDA graphs of its own is not captured again).
    bodies = {p: lambda s=s: steps_body(s) for p, s in steps.items() if p not in SELF_GRAPHED}
    timings, captured, errors = compare_graphs(bodies, n_sets, device, case.sampling)
    for p, t in timings.items():
        results.add_case(case, p, "cuda_graph", t, extra={**extra, "captured": captured})

    for p, record in records.items():
        record["extra"]["profile"] = profile_steps(cycling(steps[p]), device, case.sampling.profile_steps)
        results.write()
    if errors:
        pytest.fail(f"{case}: CUDA-graph capture failed for {errors}")
