"""The benchmark suite and the GPU run script, exercised without a GPU so that neither rots.

- ``pytest benchmarks/`` without CUDA skips every case with one reason and exits 0;
- ``pytest benchmarks/ --quick`` runs every benchmark once (kernels through the Triton
  interpreter, torch.compile on CPU) and writes a result file of the full schema, which
  ``benchmarks.report`` renders to markdown and a PNG;
- ``gpu_run.sh --dry-run`` lists every stage within the 5-minute budget and runs nothing;
- the sanitizer driver runs its small set through the interpreter.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cases, report
from benchmarks.results import HEADER_FIELDS, RECORD_FIELDS, load

ROOT = Path(__file__).resolve().parents[1]

CUDA = torch.cuda.is_available()
GPU_RUN_STAGES = (
    "install",
    "env",
    "gpu_equiv",
    "bench",
    "device_time",
    "host_time",
    "sanitizer",
    "gpu_probes",
    "core_tests",
)


def _run(args, timeout, **env):
    full_env = {**os.environ, **env}
    if not CUDA:
        full_env["TRITON_INTERPRET"] = "1"
    return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CUDA, reason="checks the behaviour without CUDA")
def test_benchmarks_skip_with_one_reason_without_cuda():
    proc = _run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-rs", "-p", "no:cacheprovider"], 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reasons = set(re.findall(r"SKIPPED \[\d+\] \S+: (.*)", proc.stdout))
    assert len(reasons) == 1 and "CUDA" in reasons.pop(), proc.stdout[-3000:]
    assert " passed" not in proc.stdout and " failed" not in proc.stdout


@pytest.mark.slow
def test_quick_benchmark_writes_the_schema_and_renders(tmp_path):
    results_dir = tmp_path / "results"
    proc = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "--quick",
            "--results-dir",
            str(results_dir),
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    files = list(results_dir.glob("*.json"))
    assert len(files) == 1, files
    data = load(files[0])
    assert set(HEADER_FIELDS) <= set(data), sorted(set(HEADER_FIELDS) - set(data))
    assert data["quick"] is True and data["copy_gbps"] > 0

    records = data["records"]
    for r in records:
        assert set(r) == set(RECORD_FIELDS), r
        assert r["ms_median"] > 0 and r["ms_iqr"] >= 0, r
    measured = {(r["op"], r["provider"], r["dtype"], r["layout"], tuple(r["shape"])) for r in records}
    planned = {
        (c.op, c.provider, c.dtype, c.layout, tuple(c.shape))
        for c in cases.gate_cases(True) + cases.module_cases(True) + cases.resnet_cases(True)
    }
    assert measured == planned, f"missing {planned - measured}, unexpected {measured - planned}"
    for r in records:
        if r["op"].startswith("gate_"):
            assert r["bytes_min"] > 0 and r["gbps"] > 0 and r["pct_copy_bw"] > 0, r
        if r["provider"] == "eager":
            assert r["speedup_vs_eager"] == pytest.approx(1.0), r

    md, png = tmp_path / "perf.md", tmp_path / "perf.png"
    assert report.main(["--results", str(files[0]), "--out-md", str(md), "--out-png", str(png)]) == 0
    text = md.read_text()
    for heading in (
        "| measure | goal |",
        "### gate_fwd",
        "### gate_bwd",
        "### gate_fwdbwd",
        "### BAM module",
        "_step: batch",
    ):
        assert heading in text, heading
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = _run([sys.executable, "-m", "benchmarks.report", "--results", str(files[0]), "--summary"], 120)
    assert summary.returncode == 0 and "| measure | goal |" in summary.stdout, summary.stderr


def test_gpu_run_dry_run_lists_every_stage_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _run(["bash", "benchmarks/gpu_run.sh", "--dry-run", str(out)], 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    script = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    listed = re.findall(r"^  (\w+)\s+(\d+)s  ", proc.stdout, flags=re.M)
    assert [name for name, _ in listed] == list(GPU_RUN_STAGES), proc.stdout
    for name, _ in listed:
        assert f"stage_{name}() {{" in script, f"stage {name} is listed but has no stage_{name} function"
    total = sum(int(b) for _, b in listed)
    assert total <= 300 and f"total budget {total}s" in proc.stdout, proc.stdout
    assert not out.exists(), "the dry run must not create or write anything"


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="the CPU smoke run of the driver; on CUDA gpu_run.sh runs it in full")
def test_sanitizer_driver_smoke_on_the_interpreter():
    proc = _run([sys.executable, "tests/gpu/sanitizer_driver.py", "--small"], 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all match the float64 reference" in proc.stdout


def test_result_file_round_trip(tmp_path):
    from benchmarks.results import ResultsFile, newest

    header = {
        "device": "test",
        "torch": "x",
        "triton": "y",
        "cuda": None,
        "python": "3",
        "date": "2026-01-01T00:00:00+00:00",
        "copy_gbps": 100.0,
        "quick": True,
    }
    rf = ResultsFile(tmp_path / "a.json", header)
    common = {
        "op": "gate_fwd",
        "dtype": "bf16",
        "layout": "nchw",
        "shape": (1, 2, 3, 4),
        "shape_set": "quick",
        "ms_iqr": 0.0,
        "bytes_min": 10**6,
    }
    rf.add(provider="eager", ms_median=2.0, **common)
    rf.add(provider="compiled", ms_median=1.0, **common)
    rf.add(provider="fused", ms_median=0.5, **common)
    data = json.loads((tmp_path / "a.json").read_text())
    fused = data["records"][-1]
    assert fused["gbps"] == pytest.approx(2.0) and fused["pct_copy_bw"] == pytest.approx(2.0)
    assert fused["speedup_vs_eager"] == pytest.approx(4.0) and fused["speedup_vs_compiled"] == pytest.approx(2.0)
    assert newest(tmp_path) == tmp_path / "a.json"
    with pytest.raises(ValueError, match="unknown record fields"):
        rf.add(provider="x", ms_median=1.0, typo=1, **common)


def test_host_time_runs_with_no_op_kernels_and_restores_them(tmp_path):
    import importlib

    from benchmarks.host_time import KERNELS, stub_kernels

    modules = [importlib.import_module(f"bam_fused.kernels.{m}") for m, _ in KERNELS]
    before = [getattr(mod, attr) for mod, (_, attr) in zip(modules, KERNELS)]
    with pytest.raises(RuntimeError, match="inside"):
        with stub_kernels():
            assert all(getattr(mod, attr) is not k for mod, (_, attr), k in zip(modules, KERNELS, before))
            raise RuntimeError("inside")
    assert all(getattr(mod, attr) is k for mod, (_, attr), k in zip(modules, KERNELS, before))

    out = tmp_path / "host.json"
    proc = _run([sys.executable, "-m", "benchmarks.host_time", "--quick", "--out", str(out)], 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    paths = {(r["path"], r["layout"]) for r in records}
    assert len(paths) == 10 and all(r["host_us"] > 0 for r in records), records


@pytest.mark.slow
def test_tune_quick_sweeps_every_candidate(tmp_path):
    """The sweep runs each candidate once per layout (kernels through the interpreter on CPU)."""
    from benchmarks.tune import bwd_candidates, fwd_candidates

    out = tmp_path / "tune.json"
    proc = _run([sys.executable, "-m", "benchmarks.tune", "--quick", "--out", str(out)], 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    n, c, h, w = records[0]["shape"]
    for op, cands in (
        ("gate_fwd", fwd_candidates(c, h * w, False, 4)),
        ("gate_bwd", bwd_candidates(n, c, h * w, False, 4, 1)),
    ):
        names = [name for name, _ in cands]
        for layout in ("nchw", "channels_last"):
            got = [r["config"] for r in records if r["op"] == op and r["layout"] == layout]
            assert got == names and all(r["ms_median"] > 0 for r in records), (op, layout, got)
    stages = {r.get("num_stages") for r in records if r["op"] == "gate_bwd"}
    assert stages == {1, 2, 3, 4}, stages


def test_device_time_cases_run_on_cpu():
    """Every callable device_time.py times runs (kernels through the interpreter), so the GPU-only
    script does not rot between GPU runs."""
    from benchmarks.device_time import gate_cases

    for layout in ("nchw", "channels_last"):
        cases = gate_cases((2, 8, 3, 5), layout, torch.device("cpu"))
        assert [name for name, _, _ in cases] == [
            "fused_fwd",
            "eager_fwd",
            "fused_bwd_launchers",
            "fused_bwd_autograd",
            "eager_bwd_autograd",
        ]
        for _, op, fn in cases:
            assert op in ("gate_fwd", "gate_bwd")
            fn()
