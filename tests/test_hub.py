"""hubconf.py: torch.hub.load(repo_dir, ..., source="local") builds the models offline."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bam_fused import BAM, FusedBAM
from bam_fused.models import ResNetBAM

ROOT = Path(__file__).resolve().parents[1]


def test_entry_points_are_the_four_depths():
    # torch.hub.list() only reads GitHub repositories; this is its rule for what a hubconf offers.
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    offered = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert offered == ["bam_resnet101", "bam_resnet18", "bam_resnet34", "bam_resnet50"]
    assert "resnet_bam(34," in hubconf.bam_resnet34.__doc__


def test_load_imagenet_default():
    model = torch.hub.load(str(ROOT), "bam_resnet50", source="local")
    assert isinstance(model, ResNetBAM)
    bams = [model.bam1, model.bam2, model.bam3]
    assert all(type(m) is FusedBAM and m.variant == "paper" for m in bams)
    assert [m.gate_channel for m in bams] == [256, 512, 1024]
    assert model.conv1.kernel_size == (7, 7) and model.fc.out_features == 1000


def test_load_cifar_eager_official_and_plain():
    model = torch.hub.load(
        str(ROOT),
        "bam_resnet18",
        source="local",
        network_type="CIFAR10",
        num_classes=10,
        attention="bam",
        variant="official",
        dilation_val=2,
    )
    assert type(model.bam1) is BAM and model.bam1.combine == "product" and model.bam1.dilation_val == 2
    assert model.conv1.kernel_size == (3, 3)
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    plain = torch.hub.load(str(ROOT), "bam_resnet34", source="local", attention=None)
    assert plain.bam1 is None and not any(isinstance(m, BAM) for m in plain.modules())


def test_load_from_a_checkout_that_is_not_installed(tmp_path):
    """What torch.hub downloads from GitHub: the source tree, where kernels/ is not yet bam_fused.kernels."""
    checkout = tmp_path / "bam_fused_checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("bam_fused", "kernels"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=ignore)
    shutil.copy(ROOT / "hubconf.py", checkout)
    # Without site processing, this package's editable install (a .pth hook) is invisible; torch,
    # triton and numpy are still found on the site-packages paths given explicitly.
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(site_packages), TRITON_INTERPRET="1")
    code = (
        "import torch\n"
        f"model = torch.hub.load({str(checkout)!r}, 'bam_resnet18', source='local', network_type='CIFAR10', "
        "num_classes=10).eval()\n"
        "import bam_fused, bam_fused.kernels\n"
        "print(bam_fused.__file__, bam_fused.kernels.__file__, model(torch.randn(1, 3, 8, 8)).shape)\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    package, kernels, shape = proc.stdout.split(maxsplit=2)
    assert package.startswith(str(checkout)) and kernels == str(checkout / "kernels" / "__init__.py")
    assert shape.strip() == "torch.Size([1, 10])"
