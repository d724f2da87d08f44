"""bam_fused.visualize: the maps are the BAM's own, and the CLI writes one PNG grid of known size per BAM."""

import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from PIL import Image
from pytorchcv.models import bamresnet
from torch import nn

from bam_fused import BAM
from bam_fused.models import resnet_bam
from bam_fused.train import main as bam_train
from bam_fused.visualize import bam_attention_maps, main
from exact import assert_as_exact_as, float64_copy


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize(
    "variant, combine, branches",
    [
        ("paper", None, "both"),
        ("official", None, "both"),
        ("paper", "max", "both"),
        ("paper", None, "channel"),
        ("official", None, "spatial"),
    ],
)
def test_maps_are_what_the_gate_applies(variant, combine, branches):
    bam = BAM(64, variant=variant, combine=combine, branches=branches)
    model = nn.Sequential(bam).train()
    x = torch.randn(2, 64, 9, 7)  # non-square, and no zeros to divide by below
    maps = bam_attention_maps(model, x)
    assert model.training, "the caller's model keeps its mode"
    assert list(maps) == ["0"]
    with torch.no_grad():
        # The forward applies y = x · (1 + σ(Mc ⊕ Ms)): the gate it applied, in float32 and float64.
        gate, gate64 = ((m.eval()(xm) / xm - 1).mean(dim=1) for m, xm in ((bam, x), (float64_copy(bam), x.double())))
    assert_as_exact_as(maps["0"]["attention"], gate, gate64, name="attention")
    if branches == "channel":
        assert maps["0"]["spatial"] is None
    else:
        torch.testing.assert_close(maps["0"]["spatial"], bam.spatial_att(x)[:, 0])


def test_maps_of_each_bam_in_a_resnet():
    maps = bam_attention_maps(resnet_bam(18, "CIFAR10", 10, attention="fused"), torch.randn(2, 3, 16, 16))
    assert {k: v["attention"].shape for k, v in maps.items()} == {
        "bam1": (2, 16, 16),
        "bam2": (2, 8, 8),
        "bam3": (2, 4, 4),
    }


def test_maps_of_an_unconverted_pytorchcv_model():
    model = bamresnet.bam_resnet18(pretrained=False).eval()
    model.features.final_pool = nn.AdaptiveAvgPool2d(1)  # its AvgPool2d(7) needs 224×224 input
    maps = bam_attention_maps(model, torch.randn(1, 3, 64, 64))
    assert {k: v["spatial"].shape for k, v in maps.items()} == {
        "features.stage2.unit1.bam": (1, 16, 16),
        "features.stage3.unit1.bam": (1, 8, 8),
        "features.stage4.unit1.bam": (1, 4, 4),
    }
    assert isinstance(model.features.stage2.unit1.bam, bamresnet.BamBlock), "converted on a copy only"
    with pytest.raises(ValueError, match="Sequential has no BAM"):
        bam_attention_maps(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 4, 4))


def test_cli_on_a_digits_checkpoint(tmp_path):
    run = tmp_path / "run"
    train = ["--dataset", "digits", "--image-size", "16", "--batch-size", "8", "--steps-per-epoch", "1"]
    assert bam_train([*train, "--epochs", "1", "--attention", "bam", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "maps"
    assert main(["--checkpoint", str(run / "model_best.pth.tar"), "--digits", "3", "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["bam1.png", "bam2.png", "bam3.png"]
    # 3 images × 1.6 in + 1 in of colour bars, 3 rows × 1.6 in + 0.5 in of title, at 100 dpi.
    assert {_png_size(out / p) for p in pngs} == {(580, 530)}


def test_cli_on_image_files_and_a_pytorchcv_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    matplotlib.image.imsave(tmp_path / "colour.png", rng.random((40, 30, 3)))  # RGBA, floats
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), mode="L").save(tmp_path / "grey.jpg")  # 8-bit
    torch.save(bamresnet.bam_resnet18(pretrained=False).state_dict(), tmp_path / "bam_resnet18.pth")
    out = tmp_path / "maps"
    argv = ["--pytorchcv", "bam_resnet18", "--checkpoint", str(tmp_path / "bam_resnet18.pth")]
    assert main([*argv, "--images", str(tmp_path / "colour.png"), str(tmp_path / "grey.jpg"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"features.stage{s}.unit1.bam.png" for s in (2, 3, 4)]
    assert {_png_size(p) for p in out.iterdir()} == {(420, 530)}
