"""Benchmark suite set-up: options, the result file, the copy-bandwidth roof, case ordering.

    pytest benchmarks/                          # CUDA: the GPU plan (benchmarks/cases.py)
    pytest benchmarks/ --quick --results-dir D  # anywhere: every benchmark once, tiny shapes

Without CUDA and without --quick every case is skipped with one reason. Under --quick on
CPU the Triton kernels run through the interpreter, which must be enabled before triton is
imported: hence the environment is set at the top of this file.
"""

import gc

import pytest
import torch

from bam_fused.common import interpret_without_cuda

from .bandwidth import copy_gbps
from .results import DEFAULT_DIR, ResultsFile, environment, result_path

CUDA = interpret_without_cuda()  # before the kernels are imported

NO_CUDA_REASON = (
    "benchmarks need a CUDA device; run `pytest benchmarks/ --quick` for the CPU smoke run "
    "(tiny shapes, kernels through the Triton interpreter)"
)


def pytest_addoption(parser):
    group = parser.getgroup("bam_fused benchmarks")
    group.addoption("--quick", action="store_true", help="each benchmark once, tiny shapes (CPU smoke run)")
    group.addoption("--results-dir", default=None, help=f"where the result JSON goes (default {DEFAULT_DIR})")
    group.addoption(
        "--compile-mode",
        default="default",
        help="torch.compile mode of the compiled provider: default, reduce-overhead, max-autotune, ...",
    )


def pytest_collection_modifyitems(config, items):
    if not CUDA and not config.getoption("--quick"):
        skip = pytest.mark.skip(reason=NO_CUDA_REASON)
        for item in items:
            item.add_marker(skip)
        return
    # Goal measurements first, so that a run cut short by its time guard still has them.
    items.sort(key=_priority)


def _priority(item) -> int:
    case = item.callspec.params.get("case") if hasattr(item, "callspec") else None
    return getattr(case, "priority", 0)


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def compile_mode(request) -> str:
    return request.config.getoption("--compile-mode")


@pytest.fixture(scope="session")
def results(request, device, quick, compile_mode) -> ResultsFile:
    """The run's result file, created with the measured copy bandwidth before any case runs."""
    env = environment(device)
    out_dir = request.config.getoption("--results-dir") or DEFAULT_DIR
    header = {**env, "copy_gbps": copy_gbps(device), "quick": quick, "compile_mode": compile_mode}
    return ResultsFile(result_path(out_dir, env["device"], env["date"]), header)


@pytest.fixture(autouse=True)
def _release_memory(device):
    """Seed each case and hand its tensors back before the next, so peaks are per case."""
    torch.manual_seed(0)
    yield
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
