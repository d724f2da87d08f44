"""The benchmark suite and the GPU run script, exercised without a GPU so that neither rots.

- ``pytest benchmarks/`` without CUDA skips every case with one reason and exits 0;
- ``pytest benchmarks/ --quick`` runs every benchmark once (kernels through the Triton
  interpreter, torch.compile on CPU) in both modes, with the profiler pass, and writes a result
  file of the full schema, which ``benchmarks.report`` renders to markdown and a PNG;
- ``gpu_run.sh --dry-run`` lists every stage, correctness first, each budget with its basis,
  within 6 minutes in the worst case and at most 8 files, running nothing; a bench stage of the
  script runs for real on a quick case; a stage killed by its time guard keeps its own log and
  every other stage's files; ``gpu_rerun.sh`` picks what a summary marks failed;
- the sanitizer driver runs its small set through the interpreter; the kernel-variant count that
  the budgets come from counts what a GPU would compile;
- ``host_time`` sizes its batches to a budget and rewrites its file after every record.
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
from benchmarks.providers import SELF_GRAPHED
from benchmarks.results import HEADER_FIELDS, RECORD_FIELDS, load
from benchmarks.timing import MODES

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
# gpu_run.sh's default stages, in order: setup, correctness, timings.
GPU_RUN_STAGES = (
    "install",
    "env",
    "module_tests",
    "sanitizer",
    "gpu_equiv",
    "cuda_graphs",
    "bench_resnet",
    "bench_module",
    "host_time",
)
# A row of the dry run's plan and its basis line: number, stage, kind, budget, ends by, log, what, basis.
PLAN_ROW = re.compile(
    r"^  (\d+) +(\w+) +(setup|check|time|optional) +(\d+)s +(\d+)s  (\S+) +(.*)\n +basis: (.+)$", flags=re.M
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
        if not (m == "cuda_graph" and p in SELF_GRAPHED)  # (replaying graphs of its own: not captured again)
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


def _gpu_run_plan(script: str, out, *args, **env):
    """(process, plan rows) of ``script --dry-run ... out``."""
    proc = _run(["bash", f"benchmarks/{script}", "--dry-run", *args, str(out)], 60, **env)
    return proc, PLAN_ROW.findall(proc.stdout)


def test_gpu_run_dry_run_plans_correctness_first_within_six_minutes(tmp_path):
    out = tmp_path / "out"
    proc, rows = _gpu_run_plan("gpu_run.sh", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r[1] for r in rows] == list(GPU_RUN_STAGES), proc.stdout
    script = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    for _, name, *_ in rows:
        assert f"stage_{name}() {{" in script, f"stage {name} is listed but has no stage_{name} function"
    kinds = [r[2] for r in rows]
    assert "check" in kinds and max(i for i, k in enumerate(kinds) if k == "check") < kinds.index("time"), kinds
    assert all(len(r[7].split()) >= 4 for r in rows), "every budget states its basis"
    budgets, ends = [int(r[3]) for r in rows], [int(r[4]) for r in rows]
    grace, summary_s = map(
        int, re.search(r"with (\d+)s kill grace per stage and (\d+)s of summary", proc.stdout).groups()
    )
    assert ends == [sum(budgets[: i + 1]) + (i + 1) * grace for i in range(len(rows))], proc.stdout
    worst = int(re.search(r"worst case (\d+)s", proc.stdout).group(1))
    assert f"total budget {sum(budgets)}s" in proc.stdout and worst == ends[-1] + summary_s <= 360, proc.stdout
    files = re.search(r"files \((\d+), limit 8\): (.*)", proc.stdout)
    assert files and int(files.group(1)) == len(files.group(2).split()) <= 8, proc.stdout
    logs = {r[5] for r in rows} | {"summary.txt"}
    assert logs <= set(files.group(2).split()), "every stage logs into a returned file"
    not_selected = re.search(r"not selected:(.*)", proc.stdout).group(1)
    assert "bench_gate (optional" in not_selected and "gpu_probes (optional" in not_selected, (
        "optional stages run only when named"
    )
    assert not out.exists(), "the dry run must not create or write anything"


def test_gpu_run_dry_run_keeps_the_table_order_and_refuses_a_plan_past_its_limit(tmp_path):
    proc, rows = _gpu_run_plan("gpu_run.sh", tmp_path, GPU_RUN_STAGES="gpu_probes,env")
    assert proc.returncode == 0 and [r[1] for r in rows] == ["env", "gpu_probes"], proc.stdout
    proc, rows = _gpu_run_plan("gpu_run.sh", tmp_path, GPU_RUN_LIMIT="100")
    assert proc.returncode == 1 and "exceeds 100 s" in proc.stderr, proc.stdout + proc.stderr
    summary_s = int(re.search(r"(\d+)s of summary", proc.stdout).group(1))
    late = [r[1] for r in rows if r[6].startswith("NOT STARTED")]
    assert late and late == [r[1] for r in rows if int(r[4]) + summary_s > 100], proc.stdout


def _summary_stages(path) -> dict:
    """stage -> status, from the machine-readable lines of a summary.txt."""
    return {m[0]: m[1] for m in re.findall(r"^stage (\w+) +(\w+) ", path.read_text(), flags=re.M)}


def _section(log, stage) -> str:
    """A stage's part of a shared log, from its header to its closing line."""
    return re.search(rf"^===== {stage} \(budget.*?^===== {stage} \w+ rc=.*?$", log, flags=re.M | re.S).group(0)


@pytest.mark.slow
def test_gpu_run_bench_stage_appends_to_one_result_file(tmp_path):
    """A bench stage for real, on one quick case: the script's pytest call, the shared bench.json
    and bench.log, and the summary that reads them (the path a GPU run takes, less the GPU)."""
    out = tmp_path / "out"
    env = {"GPU_RUN_STAGES": "bench_gate", "BENCH_PYTEST_ARGS": "--quick -k gate_fwd-bf16", "PYTHON": sys.executable}
    proc = _run(["bash", "benchmarks/gpu_run.sh", str(out)], 600, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| measure | goal |" in proc.stdout, proc.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.log", "summary.txt"]
    records = load(out / "bench.json")["records"]
    assert {(r["op"], r["extra"]["mode"]) for r in records} == {("gate_fwd", m) for m in MODES}, records
    assert "===== bench_gate ok rc=0" in (out / "bench.log").read_text()
    assert _summary_stages(out / "summary.txt") == {"bench_gate": "ok"}


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="the test stages' tests would run for real on CUDA")
def test_gpu_run_stage_killed_by_its_guard_keeps_its_log_and_the_other_files(tmp_path):
    """gpu_equiv sleeps past its budget after its pytest (the test hook): its guard kills it; its log
    keeps what it printed, env before it and gpu_probes after it keep theirs, and the summary says so."""
    out = tmp_path / "out"
    env = {
        "GPU_RUN_STAGES": "env,gpu_equiv,gpu_probes",
        "GPU_RUN_SLEEP": "gpu_equiv:300",
        "GPU_RUN_BUDGETS": "gpu_equiv:30",
        "PYTHON": sys.executable,
    }
    proc = _run(["bash", "benchmarks/gpu_run.sh", str(out)], 200, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "summary.txt", "tests.log"]
    assert _summary_stages(out / "summary.txt") == {"env": "ok", "gpu_equiv": "TIMEOUT", "gpu_probes": "ok"}
    env_txt = (out / "env.txt").read_text()
    assert "python " in env_txt and "device none" in env_txt and "===== env ok rc=0" in env_txt, env_txt
    tests_log = (out / "tests.log").read_text()
    killed = _section(tests_log, "gpu_equiv")
    assert "38 skipped" in killed and "GPU_RUN_SLEEP: stage_gpu_equiv returned 0" in killed, killed
    assert re.search(r"===== gpu_equiv TIMEOUT rc=124 3\ds of 30s", killed), killed
    assert "8 skipped" in _section(tests_log, "gpu_probes"), tests_log
    # The summary, correctness first, is the end of the output; and the rerun picks the killed stage.
    tail = proc.stdout[proc.stdout.index("gpu_run summary") :]
    assert tail.index("stage gpu_equiv") < tail.index("--- correctness"), tail
    rerun, rows = _gpu_run_plan("gpu_rerun.sh", tmp_path / "again", "--from", str(out / "summary.txt"))
    assert rerun.returncode == 0 and [r[1] for r in rows] == ["install", "env", "gpu_equiv"], rerun.stdout


SUMMARY = """\
stage install       ok        rc=0       3s/8s
stage env           ok        rc=0       2s/8s    device NVIDIA H100 80GB HBM3 sm 9.0
stage module_tests  FAILED    rc=1      40s/50s   2 failed, 49 passed in 31.0s
stage sanitizer     ok        rc=0      40s/45s
stage gpu_equiv     ok        rc=0      15s/20s   38 passed in 9.1s
stage bench_resnet  TIMEOUT   rc=124    85s/85s
stage bench_module  ok        rc=0      30s/40s
stage bench_gate    NOT_RUN   rc=-       0s/50s
failed module_tests tests/test_fused_module.py::test_half_module[torch.bfloat16]
failed module_tests tests/test_fused_module.py::test_gradcheck_float64[train]
"""


def test_gpu_rerun_dry_run_selects_what_failed_and_what_is_named(tmp_path):
    summary = tmp_path / "summary.txt"
    summary.write_text(SUMMARY)
    failed_ids = re.findall(r"^failed module_tests (\S+)", SUMMARY, flags=re.M)
    proc, rows = _gpu_run_plan("gpu_rerun.sh", tmp_path / "out", "--from", str(summary))
    assert [r[1] for r in rows] == ["install", "env", "module_tests", "bench_resnet", "bench_gate"], proc.stdout
    assert f"only these of their tests: {' '.join(failed_ids)}" in proc.stdout
    # Past 180 s: the plan says which stage would not start (a real run marks it NOT_RUN again).
    assert proc.returncode == 1 and "(limit 180s)" in proc.stdout, proc.stdout + proc.stderr
    assert [r[1] for r in rows if r[6].startswith("NOT STARTED")] == ["bench_gate"], proc.stdout
    # A stage named whole runs whole, in the table's order.
    proc, rows = _gpu_run_plan("gpu_rerun.sh", tmp_path / "out", "--stages", "host_time,sanitizer")
    assert proc.returncode == 0 and [r[1] for r in rows] == ["install", "env", "sanitizer", "host_time"], proc.stdout
    assert "only these" not in proc.stdout, proc.stdout
    proc, rows = _gpu_run_plan("gpu_rerun.sh", tmp_path / "out", "--from", str(summary), "--stages", "module_tests")
    assert "module_tests" in [r[1] for r in rows] and "only these" not in proc.stdout, proc.stdout
    summary.write_text("stage env           ok        rc=0       2s/8s\n")
    proc = _run(["bash", "benchmarks/gpu_rerun.sh", "--dry-run", "--from", str(summary), str(tmp_path / "out")], 60)
    assert proc.returncode == 0 and "nothing to rerun" in proc.stdout, proc.stdout


def test_kernel_variants_counts_what_a_gpu_would_compile(monkeypatch):
    """The count the budgets come from: one variant per kernel and specialisation, however often it
    launches; another dtype, layout or a size that is no longer a multiple of 16 is another."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "gpu"))
    from bam_fused import bam_gate
    from gpu_common import KernelVariants, kernel_variants

    def forward(dtype, shape=(2, 16, 4, 4), memory_format=torch.contiguous_format):
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
        bam_gate(x, torch.randn(shape[:2], dtype=dtype), torch.randn(shape[0], *shape[2:], dtype=dtype))

    with kernel_variants() as variants:
        forward(torch.float32)
        forward(torch.float32)
    assert variants.distinct == variants.compiled == 1 and variants.launches["gate_fwd_kernel"] == 2
    with kernel_variants() as variants:
        forward(torch.float32)
        forward(torch.bfloat16)
        forward(torch.float32, memory_format=torch.channels_last)
        forward(torch.float32, shape=(2, 16, 4, 5))
    assert variants.distinct == 4, variants.summary()
    assert variants.summary().startswith("kernel variants: 4 a GPU would compile, 4 launches (gate_fwd_kernel 4)")
    # What pytest-xdist workers hand back, summed: distinct variants once, compiles per process.
    merged = KernelVariants(processes=0)
    for _ in range(2):
        merged.merge(json.loads(json.dumps(variants.to_json())))
    assert (merged.distinct, merged.compiled, merged.processes, merged.launches["gate_fwd_kernel"]) == (4, 8, 2, 8)


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
    args = [sys.executable, "-m", "benchmarks.host_time", "--quick", "--budget-s", "20", "--out", str(out)]
    proc = _run(args, 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    records = data["records"]
    paths = [(r["path"], r["layout"]) for r in records]
    # The whole module first: its host cost is the open question.
    assert paths == [(p, layout) for layout in ("nchw", "channels_last") for p in MODULE_PATHS + PATHS]
    assert all(r["host_us"] > 0 and 1 <= r["calls"] <= 5 and r["repeats"] == 3 for r in records), records
    assert data["budget_s"] == 20


def test_host_time_plans_its_batches_within_the_share():
    from benchmarks.host_time import MIN_REPEATS, plan_calls

    assert plan_calls(1e-6, 10.0, 200, 60) == (200, 60)  # fast: the caps
    assert plan_calls(2.0, 0.1, 200, 60) == (1, MIN_REPEATS)  # slower than the share: the floor
    for call_s in (1e-5, 3e-4, 3e-3, 2e-2):
        for share_s in (0.05, 0.5, 2.0):
            calls, repeats = plan_calls(call_s, share_s, 200, 60)
            assert 1 <= calls <= 200 and MIN_REPEATS <= repeats <= 60
            if share_s >= (MIN_REPEATS + 1) * call_s:  # the warm-up batch and the timed ones fit
                assert (repeats + 1) * calls * call_s <= share_s, (call_s, share_s, calls, repeats)


def test_host_time_rewrites_its_file_after_every_record(tmp_path, monkeypatch):
    """What a run stopped by its time guard keeps: every record taken before the stop."""
    from benchmarks import host_time

    out = tmp_path / "host.json"
    on_disk = []

    def timed(fn, device, calls, repeats):  # stands in for the timing; reads the file as a kill would find it
        on_disk.append(len(json.loads(out.read_text())["records"]) if out.exists() else 0)
        return 1.0

    monkeypatch.setattr(host_time, "host_us", timed)
    assert host_time.main(["--stub", "--out", str(out)]) == 0
    n = 2 * len(host_time.MODULE_PATHS + host_time.PATHS)
    assert on_disk == list(range(n)) and len(json.loads(out.read_text())["records"]) == n


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
