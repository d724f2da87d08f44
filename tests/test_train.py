"""The training tool on --synthetic data: a two-step run, resume, a tiny ablation, a torchrun smoke."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bam_fused import FusedBAM
from bam_fused.models import load_released_checkpoint, resnet_bam
from bam_fused.train import ablation_grid, main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--synthetic",
    "--synthetic-size",
    "16",
    "--image-size",
    "8",
    "--batch-size",
    "4",
    "--steps-per-epoch",
    "2",
    "--lr",
    "0.01",
    "--no-progress",
]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_step_run_then_resume(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--depth", "18", "--out", str(out)]) == 0
    for name in ("metrics.csv", "metrics.png", "checkpoint.pth.tar", "model_best.pth.tar"):
        assert (out / name).is_file(), name
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["images_per_s"]) > 0
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=False)
    assert {"epoch", "arch", "state_dict", "best_prec1", "optimizer"} <= ckpt.keys()
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18_bam-fused"
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # one process: no wrapper
    # The checkpoint is what load_released_checkpoint reads.
    model = resnet_bam(18, "CIFAR100", 100, attention="fused")
    load_released_checkpoint(model, out / "model_best.pth.tar")

    # Resume for a second epoch, now under bf16 autocast and channels_last.
    argv = [*TINY, "--epochs", "2", "--out", str(out), "--resume", str(out / "checkpoint.pth.tar")]
    assert main([*argv, "--amp", "bf16", "--channels-last"]) == 0
    rows2 = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows2] == ["1", "2"] and rows2[0] == rows[0]
    # --epochs grew from 1 to 2: the cosine runs over 2 epochs from the 2 steps taken, as in an
    # uninterrupted 2-epoch run (0.01 · ½(1 + cos(π · 2/4)) = 0.005), not on from the 1-epoch
    # schedule's end (0).
    assert [r["lr"] for r in rows2] == ["0.01", "0.005"]
    ckpt2 = torch.load(out / "checkpoint.pth.tar", weights_only=False)
    assert ckpt2["epoch"] == 2 and ckpt2["scheduler"]["last_epoch"] == 4
    assert ckpt2["optimizer"]["state"], "optimizer momentum was saved"
    changed = [
        k for k, v in ckpt2["state_dict"].items() if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][k])
    ]
    assert changed, "the resumed epoch trained"

    # A checkpoint of another architecture is refused by name.
    with pytest.raises(SystemExit, match="arch"):
        main([*argv, "--attention", "bam"])


@pytest.mark.slow
def test_tiny_ablation(tmp_path):
    out = tmp_path / "abl"
    # Baseline, d=1, d=2 under fp16 autocast (GradScaler on CPU) with the eager BAM for speed.
    argv = [*TINY, "--steps-per-epoch", "1", "--epochs", "1", "--attention", "bam", "--amp", "fp16"]
    assert main([*argv, "--ablation", "--ablation-subset", "3", "--out", str(out)]) == 0
    rows = _rows(out / "ablation.csv")
    assert [r["name"] for r in rows] == ["baseline (no BAM)", "d=1", "d=2"]
    assert [r["attention"] for r in rows] == ["none", "bam", "bam"]
    assert int(rows[0]["params"]) < int(rows[1]["params"])
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == 1 + 3 and "| d=2 | 2 | 16 | sum | both |" in table
    assert len([p for p in out.iterdir() if p.is_dir()]) == 3


def test_ablation_grid_is_table_1():
    grid = ablation_grid()
    bam = [c for c in grid if c["attention"] != "none"]
    assert {c["dilation"] for c in bam} == {1, 2, 4, 8}
    assert {c["reduction"] for c in bam} == {4, 8, 16}
    assert {c["combine"] for c in bam} == {"sum", "product", "max"}
    assert {c["branches"] for c in bam} == {"both", "channel", "spatial"}
    keys = [tuple(c[k] for k in ("attention", "dilation", "reduction", "combine", "branches")) for c in grid]
    assert len(keys) == len(set(keys)) == 11


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "exactly one of --data DIR or --synthetic"),
        (["--synthetic", "--download"], "--download needs --data"),
        (["--synthetic", "--reduction", "0"], "--reduction must be >= 1"),
        (["--synthetic", "--ablation-subset", "2"], "--ablation-subset needs --ablation"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_data_without_torchvision_is_a_clear_error(tmp_path):
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision is installed")
    with pytest.raises(SystemExit, match="needs torchvision"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])


@pytest.mark.slow
def test_torchrun_ddp_smoke(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "examples" / "train_cifar.py"),
        *TINY,
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=False)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])  # as the released script's
    model = resnet_bam(18, "CIFAR100", 100, attention="fused")
    load_released_checkpoint(model, ckpt)
    assert isinstance(model.bam1, FusedBAM)
    assert len(_rows(out / "metrics.csv")) == 1


@pytest.mark.skipif(shutil.which("bam-train") is None, reason="console script not installed")
def test_console_script_help():
    proc = subprocess.run(["bam-train", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--ablation" in proc.stdout and "--synthetic" in proc.stdout
