"""BAM's attention maps as heat maps over the input images, one PNG grid per BAM (per stage).

    python -m bam_fused.visualize --checkpoint runs/digits/model_best.pth.tar --digits 8 --out maps/
    python -m bam_fused.visualize --checkpoint RESNET50_IMAGENET_BAM_best.pth.tar --images a.jpg b.jpg --out maps/
    python -m bam_fused.visualize --pytorchcv bam_resnet50 --checkpoint bam_resnet50.pth --images a.jpg --out maps/

For every BAM and image, two maps of the BAM's input resolution, upsampled onto the image:
``attention``, the 3-D map σ(Mc ⊕ Ms) (C×H×W) averaged over channels, and ``spatial``, Ms alone
(the spatial branch's output, before ⊕ and σ). Our BAM/FusedBAM, released-code modules and pytorchcv
``BamBlock``s all work: the model is converted (:func:`bam_fused.convert_to_fused`) on a copy first.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import digits, reference
from .models import resnet_bam_from_checkpoint
from .modules import BAM, FusedBAM, convert_to_fused
from .train import CIFAR_MEAN, CIFAR_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PANEL_INCHES = 1.6  # each image's panel in the grid
MARGIN_INCHES = (1.0, 0.5)  # room for the colour bars (right) and the title (top)
DPI = 100
ROW_TITLES = {"input": "input", "attention": "σ(Mc ⊕ Ms), channel mean", "spatial": "Ms"}


def bam_attention_maps(model: nn.Module, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor | None]]:
    """Every BAM's maps for ``images`` (N, 3, H, W), keyed by the BAM's module name.

    Each value is ``{"attention": (N, h, w), "spatial": (N, h, w) or None}`` at that BAM's input
    resolution h×w: σ(Mc ⊕ Ms) averaged over channels (constant over h×w for a channel-only BAM),
    and Ms (None for a channel-only BAM). The model runs in eval mode without gradients, on a copy
    in which every BAM-like module has been converted; ``model`` itself is left as it was.
    """
    model = convert_to_fused(copy.deepcopy(model)).eval()
    for module in model.modules():
        if isinstance(module, FusedBAM):
            # The maps come from the branches; the gate only feeds the next layers, the same on
            # either backend up to rounding. The reference needs no Triton (no interpreter on CPU).
            module.gate_backend = "reference"
    maps = {}

    def record(name: str):
        def hook(module: BAM, inputs: tuple, _output) -> None:
            x = inputs[0]
            mc, ms = module.attention_maps(x)
            ms = ms[:, 0] if ms is not None else None  # (N, 1, h, w) → (N, h, w)
            gate = torch.sigmoid(reference.gate_preactivation(mc, ms, module.combine)).mean(dim=1)
            maps[name] = {"attention": gate.expand(x.shape[0], *x.shape[2:]), "spatial": ms}

        return hook

    # The hooks stay on the copy, which is dropped on return.
    hooked = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, BAM)]
    if not hooked:
        raise ValueError(f"{type(model).__name__} has no BAM (ours, released-code layout or pytorchcv BamBlock)")
    with torch.no_grad():
        model(images)
    return maps


def figure_size(n_images: int, n_rows: int) -> tuple[float, float]:
    """(width, height) in inches of a grid of ``n_rows`` rows by ``n_images`` columns."""
    return n_images * PANEL_INCHES + MARGIN_INCHES[0], n_rows * PANEL_INCHES + MARGIN_INCHES[1]


def plot_attention(path: Path, title: str, pictures: torch.Tensor, maps: dict[str, torch.Tensor | None]) -> None:
    """One PNG grid: the pictures (N, H, W, 3) in [0, 1] on the first row, then each map of
    :func:`bam_attention_maps` (N, h, w) upsampled to H×W and overlaid on them, one colour scale
    per row. The PNG is exactly :func:`figure_size` × ``DPI`` pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"input": None, **{k: v for k, v in maps.items() if v is not None}}
    n = pictures.shape[0]
    fig, axes = plt.subplots(
        len(rows), n, figsize=figure_size(n, len(rows)), dpi=DPI, squeeze=False, layout="constrained"
    )
    for r, (kind, heat) in enumerate(rows.items()):
        if heat is not None:
            heat = F.interpolate(heat[:, None].float(), size=pictures.shape[1:3], mode="bilinear", align_corners=False)
            low, high = heat.min().item(), heat.max().item()
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(pictures[i].numpy(), interpolation="nearest")
            if heat is not None:
                overlay = ax.imshow(heat[i, 0].numpy(), cmap="jet", alpha=0.5, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(ROW_TITLES[kind], fontsize=8)
        if heat is not None:
            fig.colorbar(overlay, ax=list(axes[r]), fraction=0.02, pad=0.01)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def save_attention_figures(model: nn.Module, images: torch.Tensor, pictures: torch.Tensor, out: Path) -> list[Path]:
    """``out/<bam name>.png`` for every BAM of ``model``: :func:`plot_attention` of the maps of
    ``images`` (N, 3, H, W, as the model takes them) over ``pictures`` (N, H, W, 3) in [0, 1]."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, maps in bam_attention_maps(model, images).items():
        h, w = maps["attention"].shape[1:]
        paths.append(out / f"{name}.png")
        title = f"{name}: BAM maps at {h}×{w} over the {images.shape[2]}×{images.shape[3]} input"
        plot_attention(paths[-1], title, pictures, maps)
    return paths


# ----------------------------------------------------------------------------------------------- CLI


def read_pictures(paths: list[Path], side: int) -> torch.Tensor:
    """Image files (PNG; JPEG through Pillow) → (N, side, side, 3) float in [0, 1], resized bilinearly."""
    import matplotlib.image

    pictures = []
    for path in paths:
        pixels = torch.tensor(matplotlib.image.imread(path), dtype=torch.float32)
        if pixels.max() > 1:  # 8-bit formats read as 0..255
            pixels /= 255
        pixels = pixels[..., None].expand(-1, -1, 3) if pixels.dim() == 2 else pixels[..., :3]  # grey; RGBA
        pictures.append(F.interpolate(pixels.permute(2, 0, 1)[None], size=(side, side), mode="bilinear")[0])
    return torch.stack(pictures).permute(0, 2, 3, 1).clamp(0, 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bam_fused.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="bam-train, released-code or pytorchcv weights")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, nargs="+", help="image files (PNG, JPEG)")
    source.add_argument("--digits", type=int, help="the first N images of the bundled digits' test split")
    p.add_argument("--pytorchcv", metavar="NAME", help="--checkpoint holds pytorchcv's NAME, e.g. bam_resnet50")
    p.add_argument("--image-size", type=int, help="model input side (default: the checkpoint's, else 224)")
    p.add_argument("--out", type=Path, required=True, help="folder for one PNG per BAM")
    return p


def load_model(args) -> tuple[nn.Module, dict]:
    """(model in eval mode, the bam-train arguments saved with it, or {})."""
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if args.pytorchcv is None:
        return resnet_bam_from_checkpoint(checkpoint), checkpoint.get("args", {})
    from pytorchcv.models import bamresnet  # pytorchcv's model_provider would import torchvision

    model = getattr(bamresnet, args.pytorchcv)(pretrained=False)
    model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    return model.eval(), {}


def model_input(pictures: torch.Tensor, dataset: str | None) -> torch.Tensor:
    """Pictures (N, H, W, 3) in [0, 1] → the model's input (N, 3, H, W), normalised as ``bam-train``
    normalised ``dataset`` (the digits in grey), or with ImageNet's statistics for other checkpoints."""
    if dataset == "digits":
        return digits.to_model_input(pictures.mean(dim=3), pictures.shape[1])
    mean, std = CIFAR_MEAN.get(dataset, IMAGENET_MEAN), CIFAR_STD.get(dataset, IMAGENET_STD)
    return (pictures.permute(0, 3, 1, 2) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bam_fused.visualize``; prints the PNGs written, returns 0."""
    args = build_parser().parse_args(argv)
    model, trained_with = load_model(args)
    side = args.image_size or int(trained_with.get("image_size", 224))
    if args.digits is not None:
        grey = digits.load_digits()[0][digits.split_indices()[1][: args.digits]]
        pictures = F.interpolate(grey[:, None], size=(side, side), mode="bilinear").expand(-1, 3, -1, -1)
        pictures = pictures.permute(0, 2, 3, 1)
    else:
        pictures = read_pictures(args.images, side)
    for path in save_attention_figures(model, model_input(pictures, trained_with.get("dataset")), pictures, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
