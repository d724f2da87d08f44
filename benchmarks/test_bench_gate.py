"""The gate alone: forward, backward (all three gradients) and forward+backward, per provider.

Each case rotates through enough input sets to exceed L2 several times; on CUDA do_bench also
flushes L2 before every repetition. Every provider is checked against the reference once
before it is timed, so a wrong implementation cannot post a fast number.
"""

import torch

from bam_fused.common import DTYPES

from . import cases
from .bandwidth import gate_bytes_min
from .providers import (
    GATE_COMBINE,
    gate_inputs,
    gate_provider,
    gate_reference,
    input_set_count,
    rotating,
)
from .timing import measure, peak_memory

TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-3}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.gate_cases(metafunc.config.getoption("--quick")), ids=str)


def _check(fn, case, inputs):
    x, mc, ms, _ = inputs
    with torch.no_grad():
        got = fn(x, mc, ms).float()
        want = gate_reference(x, mc, ms, case.provider).float()
    tol = TOLERANCE[case.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{case}: {m}")


def _runner(fn, case, sets):
    """The zero-argument callable timed for ``case.op``, cycling through ``sets``."""
    if case.op == "gate_fwd":
        nxt = rotating(sets)

        def fwd():
            x, mc, ms, _ = nxt()
            with torch.no_grad():
                return fn(x, mc, ms)

        return fwd
    if case.op == "gate_bwd":
        # One retained graph per set: the backward alone is timed, forward excluded.
        nxt = rotating([(fn(x, mc, ms), (x, mc, ms), g) for x, mc, ms, g in sets])

        def bwd():
            y, inputs, g = nxt()
            return torch.autograd.grad(y, inputs, g, retain_graph=True)

        return bwd

    nxt = rotating(sets)

    def fwdbwd():
        x, mc, ms, g = nxt()
        return torch.autograd.grad(fn(x, mc, ms), (x, mc, ms), g)

    return fwdbwd


def test_gate(case, device, compile_mode, results):
    itemsize = DTYPES[case.dtype].itemsize
    n_sets = input_set_count(2 * gate_bytes_min("gate_fwd", case.shape, itemsize), device)
    sets = [gate_inputs(case.shape, case.dtype, case.layout, device, True) for _ in range(n_sets)]
    fn = gate_provider(case.provider, compile_mode)
    _check(fn, case, sets[0])
    run = _runner(fn, case, sets)
    for _ in range(2):  # Triton JIT / torch.compile compile here, not in the timed region
        run()
    peak, _ = peak_memory(run, device)
    t = measure(run, device)
    results.add_case(
        case,
        t,
        bytes_min=gate_bytes_min(case.op, case.shape, itemsize),
        peak_mem_bytes=peak,
        extra={"input_sets": n_sets, "reps": t.reps, "combine": GATE_COMBINE[case.provider]},
    )
