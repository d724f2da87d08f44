"""The benchmark suite and the GPU run script, exercised without a GPU so that neither rots.

- ``pytest benchmarks/`` without CUDA skips every case with one reason and exits 0;
- ``pytest benchmarks/ --quick`` runs every benchmark once (kernels through the Triton
  interpreter, torch.compile on CPU) in both modes, with the profiler pass, and writes a result
  file of the full schema, which ``benchmarks.report`` renders to markdown and a PNG;
- ``gpu_run.sh --dry-run`` lists every stage within the 5-minute budget and its at most 8 files,
  running nothing; a bench stage of the script runs for real on a quick case;
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
from benchmarks.timing import MODES

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
GPU_RUN_STAGES = (
    "install",
    "env",
    "bench_resnet",
    "bench_module",
    "bench_gate",
    "gpu_equiv",
    "host_time",
    "sanitizer",
    "gpu_probes",
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
    check_quick_results(files[0], tmp_path)


def check_quick_results(path, tmp_path):
    """The quick run's result file holds every planned record of the full schema, and renders."""
    data = load(path)
    assert set(HEADER_FIELDS) <= set(data), sorted(set(HEADER_FIELDS) - set(data))
    assert data["quick"] is True and set(data["copy_gbps"]) == set(MODES) and min(data["copy_gbps"].values()) > 0

    records = data["records"]
    for r in records:
        assert set(r) == set(RECORD_FIELDS), r
        assert r["ms_median"] > 0 and r["ms_iqr"] >= 0, r
        assert len(r["extra"]["samples_ms"]) == r["extra"]["rounds"] * _samples_per_round(r) > 0, r
        assert r["extra"]["min_round_median_ms"] == min(r["extra"]["round_medians_ms"]), r
    measured = {
        (r["op"], r["provider"], r["extra"]["mode"], r["dtype"], r["layout"], tuple(r["shape"])) for r in records
    }
    planned = {
        (c.op, p, m, c.dtype, c.layout, tuple(c.shape))
        for c in cases.gate_cases(True) + cases.module_cases(True) + cases.resnet_cases(True)
        for p in c.providers
        for m in MODES
    }
    assert measured == planned, f"missing {planned - measured}, unexpected {measured - planned}"
    for r in records:
        if r["op"].startswith("gate_"):
            assert r["bytes_min"] > 0 and r["gbps"] > 0 and r["pct_copy_bw"] > 0, r
        if r["provider"] == "released":
            assert r["speedup_vs_released"] == pytest.approx(1.0), r
        # No CUDA graph on a CPU: the graph path ran its body uncaptured, and says so.
        assert r["extra"].get("captured") is (False if r["extra"]["mode"] == "cuda_graph" else None), r
        profiled = r["extra"]["mode"] == "eager" and r["op"] in ("bam_module", "resnet18_step")
        assert ("profile" in r["extra"]) is profiled, r
        if profiled:
            prof = r["extra"]["profile"]
            assert prof["host_enqueue_ms"] > 0 and prof["kernel_busy_ms"] is None and prof["top_host_ops"], prof
    resnet = [r for r in records if r["op"] == "resnet18_step"]
    assert {r["provider"] for r in resnet} == set(cases.RESNET_PROVIDERS)
    assert {r["extra"]["mode"] for r in resnet} == set(MODES)

    md, png = tmp_path / "perf.md", tmp_path / "perf.png"
    assert report.main(["--results", str(path), "--out-md", str(md), "--out-png", str(png)]) == 0
    text = md.read_text()
    for heading in (
        "| measure | goal |",
        *(f"### {op}, {report.MODE_LABEL[m]}" for op in cases.GATE_OPS for m in MODES),
        *(f"### BAM module forward+backward (train mode; bf16 = autocast), {report.MODE_LABEL[m]}" for m in MODES),
        "### BAM module: profiler pass",
        *(f"### resnet18_step, {report.MODE_LABEL[m]}" for m in MODES),
        "### resnet18_step: profiler pass",
    ):
        assert heading in text, heading
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = _run([sys.executable, "-m", "benchmarks.report", "--results", str(path), "--summary"], 120)
    assert summary.returncode == 0 and "| measure | goal |" in summary.stdout, summary.stderr
    assert "### resnet18_step, device time" in summary.stdout, summary.stdout


def _samples_per_round(record) -> int:
    sampling = cases.QUICK_SAMPLING
    return sampling.samples if record["extra"]["mode"] == "eager" else sampling.graph_samples


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
    files = re.search(r"files \((\d+), limit 8\): (.*)", proc.stdout)
    assert files and int(files.group(1)) == len(files.group(2).split()) <= 8, proc.stdout
    assert not out.exists(), "the dry run must not create or write anything"


@pytest.mark.slow
def test_gpu_run_bench_stage_appends_to_one_result_file(tmp_path):
    """A bench stage for real, on one quick case: the script's pytest call, the shared bench.json
    and bench.log, and the summary that reads them (the path a GPU run takes, less the GPU)."""
    out = tmp_path / "out"
    env = {"GPU_RUN_STAGES": "bench_gate", "BENCH_PYTEST_ARGS": "--quick -k gate_fwd-bf16", "PYTHON": sys.executable}
    proc = _run(["bash", "benchmarks/gpu_run.sh", str(out)], 600, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| measure | goal |" in proc.stdout, proc.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.log", "tests.log"]
    records = load(out / "bench.json")["records"]
    assert {(r["op"], r["extra"]["mode"]) for r in records} == {("gate_fwd", m) for m in MODES}, records
    assert "===== bench_gate rc=0" in (out / "bench.log").read_text()


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
        "copy_gbps": {"eager": 100.0, "cuda_graph": 200.0},
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
    for mode, scale in (("eager", 1.0), ("cuda_graph", 0.5)):
        for provider, ms in (("released", 2.0), ("compiled", 1.0), ("fused", 0.5)):
            rf.add(provider=provider, ms_median=ms * scale, extra={"mode": mode}, **common)
    data = json.loads((tmp_path / "a.json").read_text())
    wall, device = data["records"][2], data["records"][5]
    assert wall["gbps"] == pytest.approx(2.0) and wall["pct_copy_bw"] == pytest.approx(2.0)
    # Each mode against its own roof and its own providers:
    assert device["gbps"] == pytest.approx(4.0) and device["pct_copy_bw"] == pytest.approx(2.0)
    for r in (wall, device):
        assert r["speedup_vs_released"] == pytest.approx(4.0) and r["speedup_vs_compiled"] == pytest.approx(2.0)
        assert r["speedup_vs_eager"] is None
    assert newest(tmp_path) == tmp_path / "a.json"
    with pytest.raises(ValueError, match="unknown record fields"):
        rf.add(provider="x", ms_median=1.0, typo=1, extra={"mode": "eager"}, **common)
    with pytest.raises(ValueError, match="extra.mode"):
        rf.add(provider="x", ms_median=1.0, extra={"mode": "events"}, **common)
    # A second run given the same file continues it: header kept, records appended.
    again = ResultsFile(tmp_path / "a.json", {**header, "device": "other"})
    again.add(provider="eager", ms_median=1.0, extra={"mode": "eager"}, **common)
    data = load(tmp_path / "a.json")
    assert data["device"] == "test" and len(data["records"]) == 7
    assert data["records"][2]["speedup_vs_eager"] == pytest.approx(2.0)


def test_host_time_runs_with_no_op_kernels_and_restores_them(tmp_path):
    import importlib

    from benchmarks.host_time import KERNELS, MODULE_PATHS, PATHS, stub_kernels

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
    assert paths == {(p, layout) for p in PATHS + MODULE_PATHS for layout in ("nchw", "channels_last")}
    assert all(r["host_us"] > 0 for r in records), records


@pytest.mark.slow
def test_tune_quick_sweeps_every_candidate_then_retimes_its_finalists(tmp_path):
    """The sweep runs each candidate once per layout (kernels through the interpreter on CPU); its
    best three and the heuristic are timed again, interleaved, and only that pass names a winner."""
    from benchmarks.tune import FINALISTS, bwd_candidates, fwd_candidates

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
            sweep = [r for r in records if r["op"] == op and r["layout"] == layout and r["pass"] == 1]
            assert [r["config"] for r in sweep] == names and all(r["ms_median"] > 0 for r in sweep), (op, layout)
            best = sorted(sweep, key=lambda r: r["ms_median"])[:FINALISTS]
            final = [r for r in records if r["op"] == op and r["layout"] == layout and r["pass"] == 2]
            assert {r["config"] for r in final} == {r["config"] for r in best} | {"heuristic"}, (op, layout)
            assert all(len(r["round_medians_ms"]) == 2 for r in final), final
    stages = {r.get("num_stages") for r in records if r["op"] == "gate_bwd"}
    assert stages == {1, 2, 3, 4}, stages
    assert proc.stdout.count("pass 2: heuristic") == 4, proc.stdout
