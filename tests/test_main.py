"""``python -m bam_fused``: the README's first command, on this machine's device."""

import os
import subprocess
import sys

import torch

from bam_fused.__main__ import check_modules, report, time_cpu
from exact import assert_error_within


def test_cli_runs_and_reports_agreement():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the module sets it itself
    proc = subprocess.run([sys.executable, "-m", "bam_fused"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if not torch.cuda.is_available():
        assert "agree" in proc.stdout and "DISAGREE" not in proc.stdout
        assert "GPU timings need CUDA" in proc.stdout


def test_module_check_used_on_cuda_agrees(device):
    """The FusedBAM-vs-BAM check the CUDA report prints, at a small shape: FusedBAM as near float64
    as BAM is, in bf16 autocast and in float32."""
    for dtype in (torch.bfloat16, torch.float32):
        assert_error_within(*check_modules((4, 32, 6, 6), device, dtype), dtype, str(dtype))


def test_cuda_report_runs_on_this_device(device, capsys):
    """The report ``python -m bam_fused`` prints on CUDA, run here at a tiny shape (compile included)."""
    torch._dynamo.reset()
    report(device, [(2, 16, 4, 4)], lambda fn: time_cpu(fn, reps=1))
    out = capsys.readouterr().out
    assert "FusedBAM and BAM" in out and "Gate forward+backward" in out
    assert out.count("(2, 16, 4, 4)") == 2 and "x" in out.splitlines()[-1]
