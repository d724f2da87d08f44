"""The gate alone: forward, backward (all three gradients) and forward+backward, providers interleaved.

Each case rotates through enough input sets to exceed L2 several times, in both modes: eager
(calls back to back, as a training loop makes them) and cuda_graph (one call per set captured
in sequence, replayed: device time). Every provider is checked against the reference once before
it is timed, so a wrong implementation cannot post a fast number.
"""

import pytest
import torch

from bam_fused.common import DTYPES

from . import cases
from .bandwidth import gate_bytes_min
from .providers import GATE_COMBINE, TOLERANCE, gate_inputs, gate_provider, gate_reference, gate_steps, input_set_count
from .timing import compare_eager, compare_graphs, peak_memory, steps_body


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.gate_cases(metafunc.config.getoption("--quick")), ids=str)


def _check(fn, provider, case, inputs):
    x, mc, ms, _ = inputs
    with torch.no_grad():
        got = fn(x, mc, ms).double()
        want = gate_reference(x.double(), mc.double(), ms.double(), provider)  # float64: the exact gate
    tol = TOLERANCE[case.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{case} {provider}: {m}")


def test_gate(case, device, compile_mode, results):
    itemsize = DTYPES[case.dtype].itemsize
    n_sets = input_set_count(2 * gate_bytes_min("gate_fwd", case.shape, itemsize), device)
    sets = [gate_inputs(case.shape, case.dtype, case.layout, device, True) for _ in range(n_sets)]
    fns = {p: gate_provider(p, compile_mode) for p in case.providers}
    for p, fn in fns.items():
        _check(fn, p, case, sets[0])
    steps = {p: gate_steps(fn, case.op, sets) for p, fn in fns.items()}
    for provider_steps in steps.values():
        for _ in range(case.sampling.warmup):  # Triton JIT / torch.compile compile here, not in the timed region
            steps_body(provider_steps)()
    peaks = {p: peak_memory(s[0], device)[0] for p, s in steps.items()}
    common = {"bytes_min": gate_bytes_min(case.op, case.shape, itemsize)}
    extra = lambda p: {"input_sets": n_sets, "combine": GATE_COMBINE[p]}
    for p, t in compare_eager(steps, device, case.sampling).items():
        results.add_case(case, p, "eager", t, peak_mem_bytes=peaks[p], extra=extra(p), **common)
    del steps  # the retained graphs of gate_bwd; graph mode builds its own on the capture stream

    bodies = {p: lambda fn=fn: steps_body(gate_steps(fn, case.op, sets)) for p, fn in fns.items()}
    timings, captured, errors = compare_graphs(bodies, n_sets, device, case.sampling)
    for p, t in timings.items():
        results.add_case(case, p, "cuda_graph", t, extra={**extra(p), "captured": captured}, **common)
    if errors:
        pytest.fail(f"{case}: CUDA-graph capture failed for {errors}")
