"""The bundled digits: the data, bam-train --dataset digits (a short real run), its ablation, and the
full 10-epoch-or-less check behind docs/usage.md's learning curves (opt-in: BAM_DIGITS_FULL=1)."""

import csv
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bam_fused import digits
from bam_fused.train import main

ROOT = Path(__file__).resolve().parents[1]
# The digits recipe of docs/usage.md (asserted to appear there verbatim): 16×16 fits the 5-minute budget.
RECIPE = ["--dataset", "digits", "--image-size", "16", "--epochs", "6", "--batch-size", "64", "--lr", "0.02"]


def _val_acc(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row["val_acc"]) for row in csv.DictReader(f)]


def _train(args: list[str], out: Path) -> float:
    """``python -m bam_fused.train`` in a subprocess on the CPU path that ``bam-train`` takes there:
    without TRITON_INTERPRET (which conftest sets for the kernel tests) FusedBAM's "auto" backend
    runs the reference gate. One thread: on a shared 2-core machine two were several times slower. Returns
    the run's CPU time in seconds: with one thread, its wall time on a machine nobody else uses."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "bam_fused.train", *args, "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def test_data_and_fixed_split():
    images, labels = digits.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 1
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    torch.manual_seed(123)  # the split has its own seed: a run's --seed does not move the test set
    train, test = digits.split_indices()
    assert (len(train), len(test)) == (1438, 359)
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(1797))
    assert test[:5].tolist() == digits.split_indices()[1][:5].tolist()


def test_model_input_is_normalised_grey_in_three_channels():
    images = digits.load_digits()[0][digits.split_indices()[0]]
    x = digits.to_model_input(images, 8)
    assert x.shape == (1438, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-5
    assert digits.to_model_input(images[:2], 32).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"images must have shape \(N, h, w\), got \(2, 1, 8, 8\)"):
        digits.to_model_input(images[:2, None], 16)


@pytest.mark.slow
def test_two_epochs_reach_90_percent(tmp_path):
    """The CI-sized run of the recipe: measured 97.77 % after 2 epochs (36 s, 1 thread)."""
    recipe = RECIPE.copy()
    recipe[recipe.index("--epochs") + 1] = "2"
    _train(recipe, tmp_path)
    accuracy = _val_acc(tmp_path)
    assert len(accuracy) == 2 and accuracy[-1] >= 90.0, accuracy


def test_ablation_on_digits(tmp_path):
    argv = ["--dataset", "digits", "--image-size", "8", "--batch-size", "8", "--steps-per-epoch", "1"]
    argv += ["--epochs", "1", "--attention", "bam", "--no-progress", "--ablation", "--ablation-subset", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    table = (tmp_path / "ablation.md").read_text()
    assert table.startswith("# BAM ablation (paper Table 1 grid): ResNet-18, digits, 1 epochs")
    assert table.count("\n| ") == 1 + 2 and "| d=1 | 1 | 16 | sum | both |" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "digits", "--synthetic"], "--dataset digits is bundled"),
        (["--dataset", "digits", "--data", "x"], "it takes neither --data nor --synthetic"),
    ],
)
def test_digits_takes_no_data_folder(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_usage_names_the_recipe():
    assert f"bam-train {' '.join(RECIPE)}" in (ROOT / "docs" / "usage.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BAM_DIGITS_FULL") != "1", reason="~5 min of CPU; set BAM_DIGITS_FULL=1")
def test_full_recipe_fused_and_eager(tmp_path):
    """docs/usage.md's runs: FusedBAM ≥ 95 % within the recipe's epochs, in under 5 minutes of CPU time
    (wall time on a shared machine measures the neighbours), and eager BAM with the same seed on the
    same curve (on CPU both run the reference gate)."""
    fused_s = _train([*RECIPE, "--seed", "0", "--attention", "fused"], tmp_path / "fused")
    _train([*RECIPE, "--seed", "0", "--attention", "bam"], tmp_path / "bam")
    fused, eager = _val_acc(tmp_path / "fused"), _val_acc(tmp_path / "bam")
    assert fused[-1] >= 95.0 and fused_s < 300, (fused, fused_s)
    assert max(abs(a - b) for a, b in zip(fused, eager)) <= 1.0, (fused, eager)
