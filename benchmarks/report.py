"""Render a benchmark result file as the README's performance tables and a GB/s plot.

    python -m benchmarks.report [--results FILE] [--out-md FILE] [--out-png FILE] [--summary]

FILE defaults to the newest file (by its header's date) in benchmarks/results/. The markdown
goes to stdout unless --out-md is given; the PNG goes next to the result file unless
--out-png is given. --summary prints only the goal table (issue 5), for gpu_run.sh.
"""

import argparse
import sys
from pathlib import Path

from .cases import GATE_OPS, GATE_PROVIDERS, MODULE_PROVIDERS, RESNET_PROVIDERS
from .results import DEFAULT_DIR, load, newest

# (label, op, field, goal): the fused provider's ``field`` must reach ``goal`` at its worst shape.
GATE_GOALS = (
    ("gate forward, % of copy bandwidth", "gate_fwd", "pct_copy_bw", 90.0),
    ("gate backward, % of copy bandwidth", "gate_bwd", "pct_copy_bw", 85.0),
    ("gate forward vs torch.compile", "gate_fwd", "speedup_vs_compiled", 1.0),
    ("gate backward vs torch.compile", "gate_bwd", "speedup_vs_compiled", 1.4),
    ("gate fwd+bwd vs eager (released code)", "gate_fwdbwd", "speedup_vs_eager", 4.0),
    ("BAM module fwd+bwd vs eager", "bam_module", "speedup_vs_eager", 2.0),
    ("BAM module fwd+bwd vs compiled", "bam_module", "speedup_vs_compiled", 1.15),
)


def _shape(r) -> str:
    return "×".join(map(str, r["shape"]))


def _f(v, fmt="{:.4g}") -> str:
    return "–" if v is None else fmt.format(v)


def _goal_records(records):
    """The goal data: bf16 at the ResNet-50 shapes, or (smoke runs) whatever the file holds."""
    goal = [r for r in records if r["dtype"] == "bf16" and r["shape_set"] == "resnet50"]
    return goal or records, bool(goal)


def goals(data) -> list[dict]:
    """Issue 5's goals, each evaluated at its worst shape: label, goal, value, where, met."""
    records, real = _goal_records(data["records"])
    rows = []
    for label, op, field, goal in GATE_GOALS:
        vals = [(r[field], r) for r in records if r["op"] == op and r["provider"] == "fused" and r[field]]
        value, worst = min(vals, key=lambda v: v[0]) if vals else (None, None)
        where = f"{worst['layout']} {_shape(worst)}" if worst else "no data"
        rows.append(
            {
                "label": label,
                "goal": f"≥ {goal:g}",
                "value": value,
                "where": where,
                "met": None if value is None else value >= goal,
            }
        )
    steps = {r["provider"]: r for r in records if r["op"].startswith("resnet")}
    if {"none", "eager", "fused"} <= set(steps):
        none, eager, fused = (steps[p]["ms_median"] for p in ("none", "eager", "fused"))
        ratio = (fused - none) / (eager - none) if eager != none else None
        rows.append(
            {
                "label": "ResNet step: FusedBAM overhead / eager BAM overhead",
                "goal": "≤ 0.4",
                "value": ratio,
                "where": steps["fused"]["op"],
                "met": None if ratio is None else ratio <= 0.4,
            }
        )
        pe, pf = (steps[p]["extra"].get("peak_mem_abs_bytes", steps[p]["peak_mem_bytes"]) for p in ("eager", "fused"))
        saved = None if pe is None or pf is None else (pe - pf) / 2**20
        rows.append(
            {
                "label": "ResNet step: peak memory saved by FusedBAM (MiB)",
                "goal": "> 0",
                "value": saved,
                "where": steps["fused"]["op"],
                "met": None if saved is None else saved > 0,
            }
        )
    if not real:
        for row in rows:
            row["where"] += " (smoke data, not goal shapes)"
    return rows


def goal_table(data) -> str:
    lines = ["| measure | goal | measured (worst shape) | where | met |", "|---|---|---:|---|---|"]
    for g in goals(data):
        met = {True: "yes", False: "**no**", None: "–"}[g["met"]]
        lines.append(f"| {g['label']} | {g['goal']} | {_f(g['value'], '{:.2f}')} | {g['where']} | {met} |")
    return "\n".join(lines)


def _ms(by_p, p) -> str:
    return f"{_f(by_p[p]['ms_median'])} ± {_f(by_p[p]['ms_iqr'], '{:.2g}')}" if p in by_p else "–"


def _speedups(r) -> list[str]:
    return [_f(r.get("speedup_vs_eager"), "{:.2f}×"), _f(r.get("speedup_vs_compiled"), "{:.2f}×")]


def _by(records, *fields):
    out = {}
    for r in records:
        out.setdefault(tuple(r[f] if f != "shape" else tuple(r[f]) for f in fields), {})[r["provider"]] = r
    return out


def gate_tables(records) -> list[str]:
    out = []
    for op in GATE_OPS:
        rows = _by([r for r in records if r["op"] == op], "dtype", "layout", "shape")
        if not rows:
            continue
        provs = [p for p in GATE_PROVIDERS if any(p in v for v in rows.values())]
        out += [
            f"### {op}: median ms (± IQR) per provider; fused GB/s over the byte floor",
            "",
            "| dtype | layout | shape | " + " | ".join(provs) + " | fused GB/s | % copy | vs eager | vs compiled |",
            "|---|---|---|" + "---:|" * (len(provs) + 4),
        ]
        for (dtype, layout, shape), by_p in rows.items():
            fu = by_p.get("fused", {})
            cells = [_ms(by_p, p) for p in provs]
            cells += [_f(fu.get("gbps"), "{:.0f}"), _f(fu.get("pct_copy_bw"), "{:.0f} %"), *_speedups(fu)]
            out.append(f"| {dtype} | {layout} | {'×'.join(map(str, shape))} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def module_table(records) -> list[str]:
    rows = _by([r for r in records if r["op"] == "bam_module"], "dtype", "layout", "shape")
    if not rows:
        return []
    out = [
        "### BAM module forward+backward (train mode; bf16 = autocast): median ms (± IQR)",
        "",
        "| dtype | layout | shape | " + " | ".join(MODULE_PROVIDERS) + " | fused vs eager | fused vs compiled |",
        "|---|---|---|" + "---:|" * (len(MODULE_PROVIDERS) + 2),
    ]
    for (dtype, layout, shape), by_p in rows.items():
        cells = [_ms(by_p, p) for p in MODULE_PROVIDERS] + _speedups(by_p.get("fused", {}))
        out.append(f"| {dtype} | {layout} | {'×'.join(map(str, shape))} | " + " | ".join(cells) + " |")
    return out + [""]


def resnet_table(records) -> list[str]:
    steps = [r for r in records if r["op"].startswith("resnet")]
    if not steps:
        return []
    r0 = steps[0]
    by_p = {r["provider"]: r for r in steps}
    none = by_p.get("none")
    out = [
        f"### {r0['op']}: batch {r0['shape'][0]}, {r0['shape'][2]}², {r0['dtype']} autocast, channels_last, SGD",
        "",
        "| BAM | step ms (± IQR) | overhead over no attention | peak memory (MiB) | vs eager BAM |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in RESNET_PROVIDERS:
        if p not in by_p:
            continue
        r = by_p[p]
        over = f"{100 * (r['ms_median'] / none['ms_median'] - 1):+.1f} %" if none else "–"
        peak = r["extra"].get("peak_mem_abs_bytes")
        cells = [
            f"{_f(r['ms_median'], '{:.2f}')} ± {_f(r['ms_iqr'], '{:.2f}')}",
            over,
            _f(peak and peak / 2**20, "{:.0f}"),
            _f(r["speedup_vs_eager"], "{:.2f}×"),
        ]
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return out + [""]


def markdown(data) -> str:
    head = [
        f"## Performance: {data['device']}",
        "",
        f"torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}, Python {data['python']}; "
        f"{data['date']}. Copy bandwidth measured in the same run: **{data['copy_gbps']:.0f} GB/s** "
        "(bytes read + written). GB/s counts the minimum bytes an op must move (x read and y written "
        "forward; g, x read and gx written backward; plus the N·(C+HW) maps), so % copy is the distance "
        "to the memory roofline."
        + (" **Quick smoke run (tiny shapes, CPU): numbers mean nothing.**" if data.get("quick") else ""),
        "",
        "### Goals (bf16, ResNet-50 BAM shapes, worst shape)",
        "",
        goal_table(data),
        "",
    ]
    body = gate_tables(data["records"]) + module_table(data["records"]) + resnet_table(data["records"])
    return "\n".join(head + body)


def plot(data, path) -> Path:
    """GB/s per shape and provider for each gate op and layout, the copy bandwidth as the roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gate = [r for r in data["records"] if r["op"] in GATE_OPS and r["gbps"]]
    dtypes = sorted({r["dtype"] for r in gate}, key=lambda d: d != "bf16")
    dtype = dtypes[0] if dtypes else None
    gate = [r for r in gate if r["dtype"] == dtype]
    layouts = sorted({r["layout"] for r in gate}) or ["nchw"]
    fig, axes = plt.subplots(
        len(layouts), len(GATE_OPS), figsize=(5.2 * len(GATE_OPS), 3.6 * len(layouts)), squeeze=False, sharey=True
    )
    for i, layout in enumerate(layouts):
        for j, op in enumerate(GATE_OPS):
            ax = axes[i][j]
            rows = _by([r for r in gate if r["op"] == op and r["layout"] == layout], "shape")
            shapes = list(rows)
            provs = [p for p in GATE_PROVIDERS if any(p in v for v in rows.values())]
            width = 0.8 / max(len(provs), 1)
            for k, p in enumerate(provs):
                xs = [s + (k - (len(provs) - 1) / 2) * width for s in range(len(shapes))]
                ys = [rows[s][p]["gbps"] if p in rows[s] else 0 for s in shapes]
                ax.bar(xs, ys, width, label=p)
            ax.axhline(data["copy_gbps"], color="k", ls="--", lw=1, label=f"copy {data['copy_gbps']:.0f} GB/s")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([f"{s[0][1]}@{s[0][2]}×{s[0][3]}\nN={s[0][0]}" for s in shapes], fontsize=8)
            ax.set_title(f"{op}, {dtype}, {layout}", fontsize=10)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render a benchmark result file as markdown and a PNG.")
    parser.add_argument("--results", type=Path, help=f"result JSON (default: newest in {DEFAULT_DIR})")
    parser.add_argument("--out-md", type=Path, help="write the markdown here (default: stdout)")
    parser.add_argument("--out-png", type=Path, help="write the plot here (default: next to the results)")
    parser.add_argument("--summary", action="store_true", help="print only the goal table; no files")
    args = parser.parse_args(argv)
    path = args.results or newest()
    data = load(path)
    if args.summary:
        print(f"{data['device']}  copy {data['copy_gbps']:.0f} GB/s  ({path.name})")
        print(goal_table(data))
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
