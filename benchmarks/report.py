"""Render a benchmark result file as markdown tables and a GB/s plot; check quoted figures against their files.

    python -m benchmarks.report [--results FILE] [--out-md FILE] [--out-png FILE] [--summary]
    python -m benchmarks.report --verify docs/performance.md

FILE defaults to the newest file (by its header's date) in benchmarks/results/. The markdown
goes to stdout unless --out-md is given; the PNG goes next to the result file unless
--out-png is given. --summary prints the goal table and the ResNet step's tables, for gpu_run.sh.

--verify checks a markdown file's "Performance" section: every table there must follow a line
``Source: `path/to/result.json` (run …)``, and every number in its body cells (every column but
the first) must be in that file, as printed (``0.0638`` matches 0.06375…; a column or row whose
label says MiB is compared with bytes / 2²⁰). Exit status 1 on any miss.
"""

import argparse
import bisect
import json
import re
import sys
from pathlib import Path

from .cases import BASELINES, GATE_OPS, GATE_PROVIDERS, MODULE_PROVIDERS, RESNET_PROVIDERS
from .results import DEFAULT_DIR, load, mode, newest
from .timing import MODES

# The goals of the GPU issue (bf16, the ResNet-50 BAM shapes, worst shape).
# (label, op, field, goal): the fused provider's ``field`` must reach ``goal`` at its worst shape.
GOALS = (
    ("gate forward, % of copy bandwidth", "gate_fwd", "pct_copy_bw", 90.0),
    ("gate backward, % of copy bandwidth", "gate_bwd", "pct_copy_bw", 85.0),
    ("gate forward vs torch.compile", "gate_fwd", "speedup_vs_compiled", 1.0),
    ("gate backward vs torch.compile", "gate_bwd", "speedup_vs_compiled", 1.4),
    ("gate fwd+bwd vs released", "gate_fwdbwd", "speedup_vs_released", 4.0),
    ("BAM module fwd+bwd vs released", "bam_module", "speedup_vs_released", 4.0),
    ("BAM module fwd+bwd vs compiled", "bam_module", "speedup_vs_compiled", 2.0),
)
# ResNet-50 step: FusedBAM's overhead over no BAM, in % of the plain step, at most this per timer
# (eager BAM measured +42 % in run 2).
RESNET_OVERHEAD_GOAL = {"eager": 12.0, "cuda_graph": 8.0}
MODE_LABEL = {"eager": "wall time (training loop)", "cuda_graph": "device time (CUDA graph)"}


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def _f(v, fmt="{:.4g}") -> str:
    return "–" if v is None else fmt.format(v)


def _mib(nbytes) -> str:
    return _f(nbytes and nbytes / 2**20, "{:.0f}")


def _goal_records(records):
    """The goal data: bf16 at the ResNet-50 shapes, or (smoke runs) whatever the file holds."""
    goal = [r for r in records if r["dtype"] == "bf16" and r["shape_set"] == "resnet50"]
    return goal or records, bool(goal)


def _worst(records, op, field, mode_name):
    vals = [
        (r[field], r)
        for r in records
        if r["op"] == op and r["provider"] == "fused" and mode(r) == mode_name and r[field] is not None
    ]
    return min(vals, key=lambda v: v[0]) if vals else (None, None)


def _resnet_steps(records, mode_name) -> dict:
    return {r["provider"]: r for r in records if r["op"].startswith("resnet") and mode(r) == mode_name}


def goals(data) -> list[dict]:
    """Each goal in each mode at its worst shape: label, goal, {mode: (value, where)}, met per mode."""
    records, real = _goal_records(data["records"])
    rows = []
    for label, op, field, goal in GOALS:
        by_mode = {}
        for m in MODES:
            value, worst = _worst(records, op, field, m)
            by_mode[m] = (value, f"{worst['layout']} {_shape(worst['shape'])}" if worst else "no data")
        rows.append({"label": label, "goal": f"≥ {goal:g}", "by_mode": by_mode, "at_least": goal})
    overhead, saved = {}, {"released": {}, "compiled": {}}
    for m in MODES:
        steps = _resnet_steps(records, m)
        if {"none", "fused"} <= set(steps):
            none, fused = steps["none"]["ms_median"], steps["fused"]["ms_median"]
            overhead[m] = (100 * (fused / none - 1), steps["fused"]["op"])
        # The step's own peak above what was allocated before it: the absolute peak also holds the
        # other providers' models, resident while the providers are interleaved.
        for base in saved:
            peaks = {p: steps[p]["peak_mem_bytes"] for p in (base, "fused") if p in steps}
            if None not in peaks.values() and len(peaks) == 2:
                saved[base][m] = ((peaks[base] - peaks["fused"]) / 2**20, steps["fused"]["op"])
    goal = " / ".join(f"≤ {v:g} %" for v in RESNET_OVERHEAD_GOAL.values())
    rows.append(
        {
            "label": "ResNet step: FusedBAM overhead over no BAM (%)",
            "goal": f"{goal} ({' / '.join(RESNET_OVERHEAD_GOAL)})",
            "by_mode": overhead,
            "at_most": RESNET_OVERHEAD_GOAL,
        }
    )
    for base, by_mode in saved.items():
        label = f"ResNet step: peak memory saved vs {base} (MiB)"
        rows.append({"label": label, "goal": "> 0", "by_mode": by_mode, "above": 0.0})
    for row in rows:
        for m, (value, where) in row["by_mode"].items():
            row["by_mode"][m] = (value, where if real else f"{where} (smoke data, not goal shapes)")
    return rows


def _met(row, value, mode_name: str) -> bool | None:
    if value is None:
        return None
    if "at_least" in row:
        return value >= row["at_least"]
    if "at_most" in row:
        return value <= row["at_most"][mode_name]
    return value > row["above"]


def goal_table(data) -> str:
    head = " | ".join(f"{MODE_LABEL[m]}, worst shape | met" for m in MODES)
    lines = [f"| measure | goal | {head} |", "|---|---|" + "---:|---|" * len(MODES)]
    for row in goals(data):
        cells = []
        for m in MODES:
            value, where = row["by_mode"].get(m, (None, "no data"))
            met = {True: "yes", False: "**no**", None: "–"}[_met(row, value, m)]
            cells += [f"{_f(value, '{:.2f}')} ({where})", met]
        lines.append(f"| {row['label']} | {row['goal']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(by_p, p) -> str:
    return f"{_f(by_p[p]['ms_median'])} ± {_f(by_p[p]['ms_iqr'], '{:.2g}')}" if p in by_p else "–"


def _baselines(providers) -> list[str]:
    """The baselines a table's providers include, in BASELINES order."""
    return [b for b in BASELINES if b in providers]


def _speedups(r, bases) -> list[str]:
    return [_f(r.get(f"speedup_vs_{b}"), "{:.2f}×") for b in bases]


def _by(records, *fields):
    out = {}
    for r in records:
        out.setdefault(tuple(r[f] if f != "shape" else tuple(r[f]) for f in fields), {})[r["provider"]] = r
    return out


def _vs_heads(bases) -> str:
    return " | ".join(f"fused vs {b}" for b in bases)


def gate_tables(records) -> list[str]:
    out = []
    for op in GATE_OPS:
        for m in MODES:
            rows = _by([r for r in records if r["op"] == op and mode(r) == m], "dtype", "layout", "shape")
            if not rows:
                continue
            provs = [p for p in GATE_PROVIDERS if any(p in v for v in rows.values())]
            bases = _baselines(provs)
            out += [
                f"### {op}, {MODE_LABEL[m]}: median ms (± IQR) per provider; fused GB/s over the byte floor",
                "",
                "| dtype | layout | shape | " + " | ".join(provs) + f" | fused GB/s | % copy | {_vs_heads(bases)} |",
                "|---|---|---|" + "---:|" * (len(provs) + 2 + len(bases)),
            ]
            for (dtype, layout, shape), by_p in rows.items():
                fu = by_p.get("fused", {})
                cells = [_ms(by_p, p) for p in provs]
                cells += [_f(fu.get("gbps"), "{:.0f}"), _f(fu.get("pct_copy_bw"), "{:.0f} %"), *_speedups(fu, bases)]
                out.append(f"| {dtype} | {layout} | {_shape(shape)} | " + " | ".join(cells) + " |")
            out.append("")
    return out


def profile_table(records) -> list[str]:
    """The profiler pass of each eager record that has one: is the step host-bound?"""
    profiled = [r for r in records if "profile" in r["extra"]]
    if not profiled:
        return []
    out = [
        "| op | shape | provider | wall ms | host enqueue ms | kernel-busy ms | host-bound | top host op (ms/step) |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in profiled:
        p = r["extra"]["profile"]
        top = p["top_host_ops"][0] if p["top_host_ops"] else None
        cells = [
            r["op"],
            _shape(r["shape"]),
            r["provider"],
            _f(p["wall_ms"], "{:.3f}"),
            _f(p["host_enqueue_ms"], "{:.3f}"),
            _f(p["kernel_busy_ms"], "{:.3f}"),
            {True: "yes", False: "no", None: "–"}[p["host_bound"]],
            f"{top['op']} ({top['self_cpu_ms']:.3f})" if top else "–",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def module_tables(records) -> list[str]:
    out = []
    bases = _baselines(MODULE_PROVIDERS)
    for m in MODES:
        rows = _by([r for r in records if r["op"] == "bam_module" and mode(r) == m], "dtype", "layout", "shape")
        if not rows:
            continue
        out += [
            f"### BAM module forward+backward (train mode; bf16 = autocast), {MODE_LABEL[m]}: median ms (± IQR)",
            "",
            "| dtype | layout | shape | "
            + " | ".join(MODULE_PROVIDERS)
            + f" | {_vs_heads(bases)} | peak MiB (fused) |",
            "|---|---|---|" + "---:|" * (len(MODULE_PROVIDERS) + len(bases) + 1),
        ]
        for (dtype, layout, shape), by_p in rows.items():
            fu = by_p.get("fused", {})
            cells = [_ms(by_p, p) for p in MODULE_PROVIDERS] + _speedups(fu, bases) + [_mib(fu.get("peak_mem_bytes"))]
            out.append(f"| {dtype} | {layout} | {_shape(shape)} | " + " | ".join(cells) + " |")
        out.append("")
    modules = [r for r in records if r["op"] == "bam_module"]
    return out + (["### BAM module: profiler pass (eager mode)", ""] + profile_table(modules) if out else [])


def resnet_tables(records) -> list[str]:
    out = []
    bases = _baselines(RESNET_PROVIDERS)
    for m in MODES:
        by_p = _resnet_steps(records, m)
        if not by_p:
            continue
        r0 = next(iter(by_p.values()))
        none = by_p.get("none")
        out += [
            f"### {r0['op']}, {MODE_LABEL[m]}: batch {r0['shape'][0]}, {r0['shape'][2]}², {r0['dtype']} autocast, "
            "channels_last, SGD",
            "",
            "| BAM | median ms (± IQR) | min of round medians | samples | overhead over none | step peak MiB | "
            + " | ".join(f"vs {b}" for b in bases)
            + " |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(bases),
        ]
        for p in RESNET_PROVIDERS:
            if p not in by_p:
                continue
            r = by_p[p]
            over = f"{100 * (r['ms_median'] / none['ms_median'] - 1):+.1f} %" if none else "–"
            cells = [
                f"{_f(r['ms_median'], '{:.2f}')} ± {_f(r['ms_iqr'], '{:.2f}')}",
                _f(r["extra"].get("min_round_median_ms"), "{:.2f}"),
                str(len(r["extra"].get("samples_ms", []))),
                over,
                _mib(r["peak_mem_bytes"]),
                *_speedups(r, bases),
            ]
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("")
    steps = [r for r in records if r["op"].startswith("resnet")]
    return out + ([f"### {steps[0]['op']}: profiler pass (eager mode)", ""] + profile_table(steps) if out else [])


def markdown(data) -> str:
    roofs = ", ".join(f"{MODE_LABEL[m]} {v:.0f} GB/s" for m, v in data["copy_gbps"].items())
    head = [
        f"## Performance: {data['device']}",
        "",
        f"torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}, Python {data['python']}; "
        f"{data['date']}. Copy bandwidth measured in the same run, by each timer: **{roofs}** "
        "(bytes read + written). GB/s counts the minimum bytes an op must move (x read and y written "
        "forward; g, x read and gx written backward; plus the N·(C+HW) maps), so % copy is the distance "
        "to the memory roofline. Wall time is what a training loop sees (host included); device time "
        "replays the same calls from a CUDA graph, input sets rotated inside it."
        + (" **Quick smoke run (tiny shapes, CPU): numbers mean nothing.**" if data.get("quick") else ""),
        "",
        "### Goals (bf16, ResNet-50 BAM shapes, worst shape)",
        "",
        goal_table(data),
        "",
    ]
    records = data["records"]
    return "\n".join(head + gate_tables(records) + module_tables(records) + resnet_tables(records))


def plot(data, path) -> Path:
    """GB/s per shape and provider for each gate op, layout and mode, the copy bandwidth as the roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gate = [r for r in data["records"] if r["op"] in GATE_OPS and r["gbps"]]
    dtypes = sorted({r["dtype"] for r in gate}, key=lambda d: d != "bf16")
    dtype = dtypes[0] if dtypes else None
    gate = [r for r in gate if r["dtype"] == dtype]
    panels = sorted({(r["layout"], mode(r)) for r in gate}) or [("nchw", "eager")]
    fig, axes = plt.subplots(
        len(panels), len(GATE_OPS), figsize=(5.2 * len(GATE_OPS), 3.6 * len(panels)), squeeze=False, sharey=True
    )
    for i, (layout, m) in enumerate(panels):
        roof = data["copy_gbps"].get(m)
        for j, op in enumerate(GATE_OPS):
            ax = axes[i][j]
            rows = _by([r for r in gate if r["op"] == op and r["layout"] == layout and mode(r) == m], "shape")
            shapes = list(rows)
            provs = [p for p in GATE_PROVIDERS if any(p in v for v in rows.values())]
            width = 0.8 / max(len(provs), 1)
            for k, p in enumerate(provs):
                xs = [s + (k - (len(provs) - 1) / 2) * width for s in range(len(shapes))]
                ys = [rows[s][p]["gbps"] if p in rows[s] else 0 for s in shapes]
                ax.bar(xs, ys, width, label=p)
            if roof:
                ax.axhline(roof, color="k", ls="--", lw=1, label="copy")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([f"{s[0][1]}@{s[0][2]}×{s[0][3]}\nN={s[0][0]}" for s in shapes], fontsize=8)
            ax.set_title(f"{op}, {dtype}, {layout}, {m}", fontsize=10)
            if j == 0:
                ax.set_ylabel("GB/s over the byte floor")
    legend = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8)
    fig.suptitle(f"BAM gate on {data['device']} ({data['date'][:10]})", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


SOURCE_LINE = re.compile(r"^Source: `([^`]+)`")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _numbers(value) -> list[float]:
    """Every number anywhere in a parsed JSON value (booleans excluded)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def _section(text: str, heading: str) -> list[tuple[int, str]]:
    """(line number, line) of the ``## heading`` section of a markdown text."""
    out, inside = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            inside = line[3:].strip() == heading
            continue
        if inside:
            out.append((i, line))
    return out


def _found(printed: str, values: list[float]) -> bool:
    """Whether ``printed`` is one of the sorted ``values`` rounded as printed (its decimals)."""
    decimals = len(printed.partition(".")[2])
    tol = 0.5 * 10**-decimals * (1 + 1e-9)
    p = float(printed)
    i = bisect.bisect_left(values, p - tol)
    return i < len(values) and values[i] <= p + tol


def verify(markdown_path, root=None, heading: str = "Performance") -> tuple[list[str], int]:
    """(problems, figures checked) of the tables in ``heading``'s section of ``markdown_path``;
    result files are looked up relative to ``root`` (default: the nearest folder at or above the
    markdown file's that holds ``benchmarks/``, the repository's root; else the markdown's own)."""
    path = Path(markdown_path)
    if root is None:
        root = next((p for p in path.resolve().parents if (p / "benchmarks").is_dir()), path.parent)
    root = Path(root)
    problems, checked, cache = [], 0, {}
    source, table = None, []
    lines = _section(path.read_text(), heading) + [(0, "")]
    for number, line in lines:
        if line.startswith("|"):
            table.append((number, line))
            continue
        if table:
            problems += _verify_table(table, source, root, cache)
            checked += sum(len(NUMBER.findall(c)) for _, row in table[2:] for c in _cells(row)[1:])
            table, source = [], None
        match = SOURCE_LINE.match(line)
        if match:
            source = match.group(1)
    if checked == 0 and not problems:
        problems.append(f"{path}: no table in its '{heading}' section")
    return problems, checked


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _verify_table(table, source, root: Path, cache) -> list[str]:
    first = table[0][0]
    if source is None:
        return [f"line {first}: a table with no 'Source: `file`' line before it"]
    file = root / source
    if not file.exists():
        return [f"line {first}: source {source} does not exist"]
    if source not in cache:
        values = _numbers(json.loads(file.read_text()))
        cache[source] = {1: sorted(values), 2**-20: sorted(v / 2**20 for v in values)}
    header = _cells(table[0][1])
    problems = []
    for number, row in table[2:]:
        cells = _cells(row)
        for j, cell in enumerate(cells[1:], 1):
            label = f"{header[j] if j < len(header) else ''} {cells[0]}"
            values = cache[source][2**-20 if "MiB" in label else 1]
            for printed in NUMBER.findall(cell):
                if not _found(printed, values):
                    problems.append(f"line {number}: {printed} ({cells[0]} / {header[j]}) is not in {source}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render a benchmark result file as markdown and a PNG.")
    parser.add_argument("--results", type=Path, help=f"result JSON (default: newest in {DEFAULT_DIR})")
    parser.add_argument("--out-md", type=Path, help="write the markdown here (default: stdout)")
    parser.add_argument("--out-png", type=Path, help="write the plot here (default: next to the results)")
    parser.add_argument("--summary", action="store_true", help="print the goals and the ResNet step; no files")
    parser.add_argument("--verify", type=Path, metavar="MARKDOWN", help="check its performance tables; no files")
    args = parser.parse_args(argv)
    if args.verify:
        problems, checked = verify(args.verify)
        for problem in problems:
            print(f"{args.verify}: {problem}")
        if not problems:
            print(f"{args.verify}: {checked} figures in its performance tables, each found in the file it cites")
        return 1 if problems else 0
    path = args.results or newest()
    data = load(path)
    if args.summary:
        roofs = ", ".join(f"{m} {v:.0f}" for m, v in data["copy_gbps"].items())
        print(f"{data['device']}  copy GB/s: {roofs}  ({path.name})")
        print(goal_table(data))
        print("\n".join(resnet_tables(data["records"])))
        return 0
    md = markdown(data)
    if args.out_md:
        args.out_md.write_text(md + "\n")
    else:
        sys.stdout.write(md + "\n")
    png = plot(data, args.out_png or path.with_suffix(".png"))
    print(f"plot: {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
