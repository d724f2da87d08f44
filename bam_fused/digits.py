"""scikit-learn's handwritten digits, bundled: a real data set that trains without a download.

1,797 grey 8×8 images of the digits 0–9 (pixel values 0..16), shipped as ``data/digits.csv.gz``
(see ``data/README.md`` for its origin and licence) and read with numpy, so scikit-learn is not
needed. The train/test split is fixed (its own seed, whatever the training seed); images are
scaled to [0, 1], upsampled to the requested side, repeated to 3 channels for the ResNet stem and
normalised with the training split's mean and standard deviation.
"""

import gzip
from functools import cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

NUM_CLASSES = 10
SOURCE_SIDE = 8
MAX_PIXEL = 16  # the data set's pixel range is 0..16 (counts of on pixels in 4×4 blocks)
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: every run, whatever its --seed, tests on the same 359 images


@cache
def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,) int64."""
    with resources.files("bam_fused").joinpath("data/digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = torch.from_numpy(table[:, :-1]).float().div_(MAX_PIXEL).view(-1, SOURCE_SIDE, SOURCE_SIDE)
    return images, torch.from_numpy(table[:, -1])


def split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices into :func:`load_digits`: a seeded permutation, 1438 / 359."""
    n = load_digits()[1].numel()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(n * TEST_FRACTION)
    return order[n_test:], order[:n_test]


def normalisation() -> tuple[float, float]:
    """(mean, std) of the training split's pixels in [0, 1], at the source resolution."""
    train_images = load_digits()[0][split_indices()[0]]
    return train_images.mean().item(), train_images.std().item()


def to_model_input(images: torch.Tensor, side: int) -> torch.Tensor:
    """Grey images (N, h, w) in [0, 1] → normalised model input (N, 3, side, side).

    Bilinear upsampling; the grey channel repeated 3 times (a view) for the 3-channel stem.
    """
    if images.dim() != 3:
        raise ValueError(f"images must have shape (N, h, w), got {tuple(images.shape)}")
    mean, std = normalisation()
    resized = F.interpolate(images[:, None], size=(side, side), mode="bilinear", align_corners=False)
    return ((resized - mean) / std).expand(-1, 3, -1, -1)


def digits_datasets(side: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) datasets of (image (3, side, side), label) pairs: 1438 and 359 images."""
    images, labels = load_digits()
    return tuple(TensorDataset(to_model_input(images[idx], side), labels[idx]) for idx in split_indices())
