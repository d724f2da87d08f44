"""python -m bam_fused.curves: several runs' learning curves in one PNG, and a table of accuracies."""

import pytest

from bam_fused.curves import main
from bam_fused.train import METRIC_FIELDS, write_metrics


def _run(folder, accuracies):
    folder.mkdir()
    rows = [
        {field: 1.0 for field in METRIC_FIELDS} | {"epoch": i + 1, "val_acc": acc, "val_loss": 10.0**-i}
        for i, acc in enumerate(accuracies)
    ]
    write_metrics(folder / "metrics.csv", rows)
    return str(folder)


def test_two_runs_one_png_and_table(tmp_path, capsys):
    runs = [_run(tmp_path / "fused", [50.0, 97.5]), _run(tmp_path / "bam", [50.0, 97.25, 98.0])]
    out = tmp_path / "curves.png"
    assert main([*runs, "--labels", "FusedBAM", "BAM", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| epoch | FusedBAM val acc (%) | BAM val acc (%) |"
    assert table[2:] == ["| 1 | 50.00 | 50.00 |", "| 2 | 97.50 | 97.25 |", "| 3 |  | 98.00 |"]


def test_labels_must_name_each_run_once(tmp_path, capsys):
    runs = [_run(tmp_path / "a", [1.0]), _run(tmp_path / "b", [2.0])]
    with pytest.raises(SystemExit):
        main([*runs, "--labels", "x", "x", "--out", str(tmp_path / "c.png")])
    assert "1 distinct labels for 2 runs" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")])
    assert "no metrics.csv rows in" in capsys.readouterr().err
