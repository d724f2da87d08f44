"""The whole BAM module, forward+backward in train mode: eager BAM vs FusedBAM vs compiled BAM.

bf16/fp16 cases run under autocast with fp32 weights, as a mixed-precision training step does.
"""

import torch

from bam_fused.common import DTYPES, LAYOUTS

from . import cases
from .providers import autocast_for, bam_module, rotating
from .timing import measure, peak_memory


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.module_cases(metafunc.config.getoption("--quick")), ids=str)


def test_bam_module(case, device, compile_mode, results):
    module = bam_module(case.provider, case.shape[1], device, compile_mode, case.layout)
    dt, fmt = DTYPES[case.dtype], LAYOUTS[case.layout]
    sets = [
        tuple(
            torch.randn(case.shape, device=device, dtype=dt).contiguous(memory_format=fmt).requires_grad_(rg)
            for rg in (True, False)
        )
        for _ in range(2)
    ]
    nxt = rotating(sets)

    def step():
        x, g = nxt()
        with autocast_for(case.dtype, device):
            y = module(x)
        module.zero_grad(set_to_none=True)
        y.backward(g.to(y.dtype))

    for _ in range(2):
        step()
    peak, _ = peak_memory(step, device)
    t = measure(step, device, warmup_ms=20, rep_ms=100)
    results.add_case(
        case,
        t,
        peak_mem_bytes=peak,
        extra={"reps": t.reps, "variant": "paper", "combine": "sum"},
    )
