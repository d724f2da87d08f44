"""Learning curves of several ``bam-train`` runs in one PNG, and their validation accuracy as a table.

    python -m bam_fused.curves examples/digits/fused examples/digits/bam --out examples/digits/curves.png

Each RUN is a ``bam-train --out`` folder; its ``metrics.csv`` is read. Accuracy and loss per epoch,
validation solid and training dashed, one colour and marker per run (the loss on a log scale: an early epoch's
validation loss can be thousands while BN's running statistics catch up).
"""

import argparse
import sys
from pathlib import Path

from .train import read_metrics

MARKERS = "oxs^v"


def plot_runs(path: Path, runs: dict[str, list[dict]], title: str) -> None:
    """``runs``: {label: metrics.csv rows}; writes the two-panel PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for colour, (label, rows) in enumerate(runs.items()):
        epochs = [int(r["epoch"]) for r in rows]
        for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
            for split, style in (("val", "-"), ("train", "--")):
                values = [float(r[f"{split}_{key}"]) for r in rows]
                # Wider lines first and a marker each, so that runs which coincide stay visible.
                ax.plot(
                    epochs,
                    values,
                    style,
                    color=f"C{colour}",
                    lw=max(4.0 - 1.5 * colour, 1.0),
                    marker=MARKERS[colour % len(MARKERS)],
                    ms=5,
                    label=f"{label} ({split})",
                )
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: validation accuracy per epoch (rows) and run (columns)."""
    labels = list(runs)
    lines = ["| epoch | " + " | ".join(f"{label} val acc (%)" for label in labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for i in range(max(len(rows) for rows in runs.values())):
        cells = [f"{float(runs[label][i]['val_acc']):.2f}" if i < len(runs[label]) else "" for label in labels]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bam_fused.curves``: writes ``--out`` and prints the table."""
    p = argparse.ArgumentParser(prog="python -m bam_fused.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="bam-train --out folders")
    p.add_argument("--labels", nargs="+", help="one per run (default: the folder names)")
    p.add_argument("--title", default="bam-train learning curves")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(set(labels)) != len(args.runs):
        p.error(f"--labels: {len(set(labels))} distinct labels for {len(args.runs)} runs")
    runs = {label: read_metrics(run / "metrics.csv") for label, run in zip(labels, args.runs)}
    empty = [str(run) for run, rows in zip(args.runs, runs.values()) if not rows]
    if empty:
        p.error(f"no metrics.csv rows in {', '.join(empty)}")
    plot_runs(args.out, runs, args.title)
    print(accuracy_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
