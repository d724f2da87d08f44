"""What the suite measures: shapes, dtypes, layouts and providers per op, for the GPU and --quick.

The GPU plan is chosen to fit the 5-minute ``gpu_run.sh`` budget: every provider on bf16 in
both layouts (the goal dtype), fp16/fp32 on a subset, and torch.compile only where its
per-shape recompilation buys a number the goals need. Cases carry a priority so the goal
measurements run first and survive a stage timeout.
"""

from dataclasses import dataclass

from bam_fused.common import CIFAR_BAM_SHAPES, RESNET50_BAM_SHAPES

GATE_OPS = ("gate_fwd", "gate_bwd", "gate_fwdbwd")
GATE_PROVIDERS = ("eager", "eager_paper", "fused", "compiled")
MODULE_PROVIDERS = ("eager", "fused", "compiled")
RESNET_PROVIDERS = ("none", "eager", "fused", "compiled")

QUICK_GATE_SHAPE = (2, 16, 6, 6)
# bam1's input in the quick ResNet-18 step, so that its compiled BAM hits inductor's graph cache.
QUICK_MODULE_SHAPE = (2, 64, 8, 8)


@dataclass(frozen=True)
class Case:
    """One measurement: ``op`` on ``shape`` (N, C, H, W) by ``provider``; lower priority runs first."""

    op: str
    provider: str
    shape: tuple
    dtype: str
    layout: str
    shape_set: str
    priority: int

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.op}-{self.provider}-{self.dtype}-{self.layout}-{shape}"


@dataclass(frozen=True)
class ResNetCase:
    """A ResNet training step: batch ``batch`` of ``image``² images, ``dtype`` autocast, channels_last."""

    provider: str
    depth: int
    batch: int
    image: int
    priority: int
    dtype: str = "bf16"
    layout: str = "channels_last"
    shape_set: str = "resnet50"

    @property
    def op(self) -> str:
        return f"resnet{self.depth}_step"

    @property
    def shape(self) -> tuple:
        return (self.batch, 3, self.image, self.image)

    def __str__(self) -> str:
        return f"{self.op}-{self.provider}-b{self.batch}-{self.image}px"


def _gate(shapes, shape_set, dtypes, layouts, providers, priority):
    return [
        Case(op, provider, shape, dtype, layout, shape_set, priority)
        for dtype in dtypes
        for layout in layouts
        for shape in shapes
        for op in GATE_OPS
        for provider in providers
    ]


def gate_cases(quick: bool) -> list[Case]:
    if quick:
        # torch.compile costs seconds per shape on CPU: compiled on one of the two quick configs.
        return _gate([QUICK_GATE_SHAPE], "quick", ["fp32"], ["nchw"], GATE_PROVIDERS, 0) + _gate(
            [QUICK_GATE_SHAPE], "quick", ["bf16"], ["channels_last"], ("eager", "eager_paper", "fused"), 0
        )
    both = ["nchw", "channels_last"]
    eager_fused = ("eager", "eager_paper", "fused")
    return (
        _gate(RESNET50_BAM_SHAPES, "resnet50", ["bf16"], both, GATE_PROVIDERS, 0)
        + _gate(CIFAR_BAM_SHAPES, "cifar", ["bf16"], ["nchw"], GATE_PROVIDERS, 3)
        + _gate(CIFAR_BAM_SHAPES, "cifar", ["bf16"], ["channels_last"], eager_fused, 3)
        + _gate(RESNET50_BAM_SHAPES, "resnet50", ["fp16", "fp32"], ["nchw"], ("eager", "fused"), 4)
    )


def module_cases(quick: bool) -> list[Case]:
    """BAM forward+backward (train mode); bf16 means under bf16 autocast with fp32 weights."""
    if quick:
        shape = QUICK_MODULE_SHAPE
        return [Case("bam_module", p, shape, "fp32", "channels_last", "quick", 0) for p in MODULE_PROVIDERS]
    # Same shapes, dtype and layout as the ResNet step, so its compiled BAMs hit inductor's cache.
    return [
        Case("bam_module", p, shape, "bf16", "channels_last", "resnet50", 2)
        for shape in RESNET50_BAM_SHAPES
        for p in MODULE_PROVIDERS
    ] + [
        Case("bam_module", p, shape, "bf16", "channels_last", "cifar", 3)
        for shape in CIFAR_BAM_SHAPES
        for p in ("eager", "fused")
    ]


def resnet_cases(quick: bool) -> list[ResNetCase]:
    if quick:
        # ResNet-18 in fp32: on CPU bf16 convolutions and compiling ResNet-50's wider BAMs take minutes.
        return [ResNetCase(p, 18, 2, 32, 0, "fp32", shape_set="quick") for p in RESNET_PROVIDERS]
    return [ResNetCase(p, depth=50, batch=64, image=224, priority=1) for p in RESNET_PROVIDERS]
