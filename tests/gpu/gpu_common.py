"""Shared by the GPU checks and the sanitizer driver: import paths, the device, the result file.

The checks run on CUDA (``pytest -m gpu tests/gpu``). Each writes what it measured into
``$BAM_GPU_RESULTS/gpu_checks.json`` when that variable names a directory (gpu_run.sh sets
it), so the GPU run's evidence survives the machine. Off CUDA the shapes shrink so that the
logic can be exercised under the Triton interpreter (``pytest --noconftest tests/gpu``).
"""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# The repo root (benchmarks.providers) and tests/ (gate_cases, exact) for scripts and --noconftest runs.
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from exact import assert_as_exact_as  # noqa: E402
from gate_cases import assert_close, make_inputs, poisoned_like, reference64  # noqa: E402

__all__ = [
    "DEVICE",
    "ON_GPU",
    "ROOT",
    "assert_as_exact_as",
    "assert_close",
    "make_inputs",
    "poisoned_like",
    "record",
    "reference64",
]

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
RESULTS_ENV = "BAM_GPU_RESULTS"
RESULTS_FILE = "gpu_checks.json"


def record(check: str, **payload) -> None:
    """Store ``payload`` under ``check`` in the GPU result file (a no-op without $BAM_GPU_RESULTS)."""
    out = os.environ.get(RESULTS_ENV)
    if not out:
        return
    from benchmarks.results import environment

    path = Path(out) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {"env": environment(DEVICE), "checks": {}}
    data["checks"][check] = payload
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
