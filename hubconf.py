"""torch.hub entry points: ResNet-18/34/50/101 with BAM, built by :func:`bam_fused.models.resnet_bam`.

    model = torch.hub.load("path/to/bam_fused", "bam_resnet50", source="local")        # offline
    model = torch.hub.load("path/to/bam_fused", "bam_resnet18", source="local",
                           network_type="CIFAR10", num_classes=10, attention="bam", variant="official")

There are no pretrained weights of this package's own; pytorchcv's pretrained BAM-ResNets convert
with :func:`bam_fused.convert_to_fused`.
"""

import importlib.util
import pathlib  # modules, not names: torch.hub.list() lists every public callable here

import bam_fused

dependencies = ["torch", "numpy"]

# A checkout that torch.hub downloaded is not installed: the kernels live in the repository's
# kernels/ folder, which an installed package maps to bam_fused.kernels (pyproject's package-dir).
if importlib.util.find_spec("bam_fused.kernels") is None:
    bam_fused.__path__.append(str(pathlib.Path(__file__).resolve().parent))

from bam_fused.models.resnet import DEPTHS as _DEPTHS  # noqa: E402  (after the path fix-up above)
from bam_fused.models.resnet import resnet_bam as _resnet_bam  # noqa: E402


def _entry_point(depth: int):
    def build(network_type="ImageNet", num_classes=1000, attention="fused", variant="paper", **bam_kwargs):
        return _resnet_bam(depth, network_type, num_classes, attention, variant, **bam_kwargs)

    build.__name__ = build.__qualname__ = f"bam_resnet{depth}"
    build.__doc__ = (
        f"ResNet-{depth} with BAM after layer1..layer3: ``bam_fused.models.resnet_bam({depth}, network_type, "
        f"num_classes, attention, variant, **bam_kwargs)``, whose docstring lists the arguments."
    )
    return build


for _depth in _DEPTHS:
    globals()[f"bam_resnet{_depth}"] = _entry_point(_depth)
