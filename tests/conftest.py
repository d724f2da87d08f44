"""Test set-up: without CUDA the Triton kernels run on CPU tensors through the interpreter.

TRITON_INTERPRET must be set before the kernels are imported, hence at the top of this file.
"""

import pytest
import torch

from bam_fused.common import interpret_without_cuda

CUDA = interpret_without_cuda()
DEVICE = torch.device("cuda" if CUDA else "cpu")


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
