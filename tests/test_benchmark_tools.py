"""The benchmarks' parts on CPU: the released provider against the authors' formula, the timers'
round robin and input-set rotation, the profiler pass, and the check of figures quoted in docs/performance.md."""

import json
from pathlib import Path

import pytest
import torch

from bam_fused import BAM, reference
from benchmarks import providers, report
from benchmarks.released_bam import BAM as ReleasedBAM
from benchmarks.timing import (
    Sampling,
    Timing,
    _union_us,
    calls_for,
    compare_eager,
    compare_graphs,
    interleave,
    profile_steps,
)
from exact import assert_as_exact_as, float64_copy, randomize_bn

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("training", [True, False])
def test_released_provider_computes_the_authors_formula(training):
    """The ``released`` module against the formula computed independently: BAM(variant="official")
    holding its weights, and the released-code gate applied to that module's own maps."""
    released = providers.bam_module("released", 64, CPU)
    assert isinstance(released, ReleasedBAM)
    randomize_bn(released)
    official = BAM(64, variant=providers.BENCH_VARIANT)
    official.load_state_dict(released.state_dict(), strict=True)
    exact = float64_copy(official)
    for module in (released, official, exact):
        module.train(training)
    x = torch.randn(4, 64, 9, 9)
    with torch.no_grad():
        got = released(x)
        mc, ms = official.attention_maps(x)
        by_gate = reference.released_code_gate(x, mc, ms[:, 0], "product")
        want = official(x)
        want64 = exact(x.double())
    # Each as near a float64 run of BAM(variant="official") as that module's float32 run.
    assert_as_exact_as(got, want, want64, name="released")
    assert_as_exact_as(by_gate, want, want64, name="released_code_gate")
    # The comparison discriminates: the paper's BAM on the same weights computes something else.
    paper = BAM(64).train(training)
    paper.load_state_dict(released.state_dict(), strict=False)
    with torch.no_grad():
        assert (paper(x) - got).abs().max() > 1e-2


def test_released_provider_gate_runs_in_x_dtype_under_autocast():
    """As users of the released code run it: under bf16 autocast every full-size tensor it saves
    for backward is bf16 (bam_fused.BAM's float32 reference gate saves float32 ones)."""
    x = torch.randn(2, 32, 6, 6, dtype=torch.bfloat16, requires_grad=True)
    full = x.numel()
    saved = {}
    for name in ("released", "eager"):
        module = providers.bam_module(name, 32, CPU, layout="nchw")
        dtypes = []

        def pack(t, dtypes=dtypes):
            if t.numel() == full:
                dtypes.append(t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), providers.autocast_for("bf16", CPU):
            y = module(x)
        assert y.dtype == torch.bfloat16
        saved[name] = set(dtypes)
    assert saved["released"] == {torch.bfloat16}, saved
    assert torch.float32 in saved["eager"], saved


def test_released_resnet_matches_eager_on_the_same_weights():
    state = providers.resnet_weights(18)
    models = {p: providers.resnet_model(p, 18, CPU, state=state).eval() for p in ("released", "eager", "none")}
    assert all(isinstance(getattr(models["released"], b), ReleasedBAM) for b in providers.RESNET_BAMS)
    assert all(getattr(models["none"], b) is None for b in providers.RESNET_BAMS)
    exact = float64_copy(models["eager"])
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = {p: m(x) for p, m in models.items()}
        assert_as_exact_as(out["released"], out["eager"], exact(x.double()), name="logits")
    assert (out["none"] - out["eager"]).abs().max() > 1e-3


def test_timing_statistics():
    t = Timing(((3.0, 1.0), (2.0, 5.0), (4.0,)))
    assert t.samples_ms == [3.0, 1.0, 2.0, 5.0, 4.0] and t.reps == 5
    assert t.ms_median == 3.0 and t.ms_iqr == pytest.approx(2.0)
    assert t.round_medians_ms == [2.0, 3.5, 4.0]
    assert t.extra()["min_round_median_ms"] == 2.0 and t.extra()["rounds"] == 3


def test_interleave_is_round_robin_with_a_rotating_first():
    order = []
    samplers = {name: (lambda name=name: order.append(name) or [1.0]) for name in "abc"}
    timings = interleave(samplers, rounds=4)
    assert order == list("abcbcacababc")
    assert all(len(t.rounds_ms) == 4 for t in timings.values())
    assert interleave({}, rounds=3) == {}


def test_calls_for_covers_every_input_set_alike():
    assert calls_for(lambda: None, CPU, target_ms=0.0, multiple=3) == 1
    n = calls_for(lambda: None, CPU, target_ms=1e6, multiple=3)
    assert n % 3 == 0 and 3 <= n <= 256


def test_compare_eager_cycles_through_the_input_sets():
    ran = []
    steps = {"p": [lambda: ran.append(0), lambda: ran.append(1)]}
    timings = compare_eager(steps, CPU, Sampling(rounds=3, samples=2))
    assert ran == [0, 1] * 3 and timings["p"].reps == 6


def test_compare_graphs_replays_every_set_once_per_call_and_keeps_failures_apart():
    """The graph path's structure on CPU: a body per provider built by its make_body, one step per
    input set in order per replay; a provider whose body cannot be built is reported, not fatal."""
    ran = []

    def make_body():
        steps = [lambda i=i: ran.append(i) for i in range(3)]
        return lambda: [s() for s in steps]

    def broken():
        raise RuntimeError("operation not permitted when stream is capturing")

    timings, captured, errors = compare_graphs({"ok": make_body, "bad": broken}, 3, CPU, Sampling(rounds=2))
    assert captured is False and set(timings) == {"ok"} and "not permitted" in errors["bad"]
    assert ran == [0, 1, 2] * 2 and timings["ok"].reps == 2


def test_union_of_kernel_intervals():
    assert _union_us([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert _union_us([]) == 0


def test_profile_steps_on_cpu_finds_the_op_that_spends_the_host_time():
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    small = torch.randn(4)
    prof = profile_steps(lambda: (a @ b, small + 1), CPU, steps=2)
    assert prof["steps"] == 2 and prof["kernel_busy_ms"] is None and prof["host_bound"] is None
    assert prof["wall_ms"] > 0 and prof["host_enqueue_ms"] > 0
    assert 0 < prof["host_in_ops_ms"] <= prof["host_enqueue_ms"]
    assert prof["top_host_ops"][0]["op"] == "aten::mm", prof["top_host_ops"]
    assert {o["op"] for o in prof["top_host_ops"]} >= {"aten::mm", "aten::add"}


def _readme(tmp_path, table: str, source: str = "Source: `r.json` (run 9)") -> str:
    (tmp_path / "r.json").write_text(json.dumps({"records": [{"ms": 0.123456, "peak": 3555706880, "pct": 76.1}]}))
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\n## Performance\n\n{source}\n\n{table}\n\n## Next\n\n| a | b |\n|---|---|\n| 1 | 999 |\n")
    return path


def test_verify_accepts_figures_as_printed_from_their_file(tmp_path):
    table = "| case | ms (% copy) | peak MiB |\n|---|---:|---:|\n| nchw 256@56² | 0.1235 (76 %) | 3391 |"
    problems, checked = report.verify(_readme(tmp_path, table))
    assert problems == [] and checked == 3
    assert report.main(["--verify", str(tmp_path / "README.md")]) == 0


@pytest.mark.parametrize(
    "table, source, message",
    [
        ("| case | ms |\n|---|---:|\n| x | 0.1244 |", "Source: `r.json` (run 9)", "0.1244"),
        ("| case | peak MiB |\n|---|---:|\n| x | 3392 |", "Source: `r.json` (run 9)", "3392"),
        ("| case | ms |\n|---|---:|\n| x | 0.1235 |", "(no source line)", "no 'Source"),
        ("| case | ms |\n|---|---:|\n| x | 0.1235 |", "Source: `gone.json` (run 9)", "does not exist"),
    ],
)
def test_verify_fails_on_a_figure_its_file_does_not_hold(tmp_path, table, source, message):
    problems, _ = report.verify(_readme(tmp_path, table, source))
    assert len(problems) == 1 and message in problems[0], problems
    assert report.main(["--verify", str(tmp_path / "README.md")]) == 1


def test_performance_figures_are_in_the_files_they_cite():
    """CI's check: ``python -m benchmarks.report --verify docs/performance.md``."""
    problems, checked = report.verify(ROOT / "docs" / "performance.md")
    assert problems == [] and checked > 0, problems
