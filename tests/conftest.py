"""Test set-up: without CUDA the Triton kernels run on CPU tensors through the interpreter.

TRITON_INTERPRET must be set before the kernels are imported, hence at the top of this file.

BAM_TEST_THREADS=N runs the suite with N intra-op threads (torch.set_num_threads, and
OMP_NUM_THREADS for the processes tests start): another summation order in every parallel CPU
reduction, which the float64-judged comparisons (tests/exact.py) must not notice.
"""

import os

import pytest
import torch

from bam_fused.common import interpret_without_cuda

CUDA = interpret_without_cuda()
DEVICE = torch.device("cuda" if CUDA else "cpu")
THREADS_ENV = "BAM_TEST_THREADS"


def pytest_configure(config):
    threads = os.environ.get(THREADS_ENV)
    if threads is None:
        return
    if not threads.isdigit() or int(threads) < 1:
        raise pytest.UsageError(f"{THREADS_ENV} must be a positive integer, got {threads!r}")
    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = threads


def pytest_report_header(config):
    return f"torch intra-op threads: {torch.get_num_threads()} ({THREADS_ENV}={os.environ.get(THREADS_ENV)})"


def pytest_collection_modifyitems(config, items):
    if CUDA:
        # Every test that takes the `device` fixture runs on CUDA here: `pytest -m gpu` selects them.
        for item in items:
            if "device" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.gpu)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (GPU tests run with `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
