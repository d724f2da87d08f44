"""Benchmark suite set-up: options, the result file, the copy-bandwidth roof, case ordering.

    pytest benchmarks/                          # CUDA: the GPU plan (benchmarks/cases.py)
    pytest benchmarks/ --quick --results-dir D  # anywhere: every benchmark once, tiny shapes
    pytest benchmarks/test_bench_resnet.py --results-file F   # one level, appended to F

Without CUDA and without --quick every case is skipped with one reason. Under --quick on
CPU the Triton kernels run through the interpreter, which must be enabled before triton is
imported: hence the environment is set at the top of this file.
"""

import gc
from pathlib import Path

import pytest
import torch

from bam_fused.common import interpret_without_cuda

from .bandwidth import copy_gbps
from .results import DEFAULT_DIR, ResultsFile, environment, result_path
from .timing import MODES

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
        "--results-file",
        default=None,
        help="the result JSON itself, continued when it exists (gpu_run.sh stages share one); beats --results-dir",
    )
    group.addoption(
        "--compile-mode",
        default="default",
        help="torch.compile mode of the compiled provider: default, reduce-overhead, max-autotune, ...",
    )


def pytest_configure(config):
    if not CUDA and config.getoption("--quick"):
        # The smoke run's tiny shapes gain nothing from intra-op threads, and on a shared CPU
        # OpenMP's waiting threads cost far more than they give: a ResNet-18 forward on 2×32²
        # images took 1.2 s with 2 threads and 0.013 s with 1 on the 2-core machine under load.
        torch.set_num_threads(1)


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
    """The run's result file, created with the copy bandwidth measured in each mode before any case
    runs (or continued, header and all, when --results-file names an existing one)."""
    path = request.config.getoption("--results-file")
    if path and Path(path).exists():
        return ResultsFile(path, {})
    env = environment(device)
    path = path or result_path(request.config.getoption("--results-dir") or DEFAULT_DIR, env["device"], env["date"])
    roofs = {mode: copy_gbps(device, mode) for mode in MODES}
    return ResultsFile(path, {**env, "copy_gbps": roofs, "quick": quick, "compile_mode": compile_mode})


@pytest.fixture(autouse=True)
def _release_memory(device):
    """Seed each case and hand its tensors back before the next, so peaks are per case."""
    torch.manual_seed(0)
    yield
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
