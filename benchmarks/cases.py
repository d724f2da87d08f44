"""What the suite measures: shapes, dtypes, layouts, providers and sampling per level, for the GPU and --quick.

Each case is one comparison: its providers are timed together, interleaved, in both modes
(``eager``: wall time as a training loop sees it; ``cuda_graph``: device time). The GPU plan
fits ``gpu_run.sh``'s stages (one per level, each under its own time guard); within a stage,
cases carry a priority so that the goal measurements run first and survive a timeout.
"""

from dataclasses import dataclass

from bam_fused.common import CIFAR_BAM_SHAPES, RESNET50_BAM_SHAPES

from .timing import Sampling

GATE_OPS = ("gate_fwd", "gate_bwd", "gate_fwdbwd")
GATE_PROVIDERS = ("released", "eager_paper", "fused", "compiled")
MODULE_PROVIDERS = ("released", "eager", "fused", "compiled", "fused_compiled", "fused_reduce_overhead")
RESNET_PROVIDERS = ("none", "released", "eager", "fused", "compiled", "fused_compiled", "fused_reduce_overhead")
# Speedups are stated against these providers, where a case has them (see results.derive).
BASELINES = ("released", "eager", "compiled")

QUICK_GATE_SHAPE = (2, 16, 6, 6)
# bam1's input in the quick ResNet-18 step, so that its compiled BAM hits inductor's graph cache.
QUICK_MODULE_SHAPE = (2, 64, 8, 8)

# --quick: every code path once or twice; the numbers mean nothing.
QUICK_SAMPLING = Sampling(rounds=2, samples=1, graph_samples=1, sample_ms=0.0, profile_steps=1, warmup=0)
# GPU: a sample of a gate or module call spans a few ms of back-to-back calls; seven rounds.
GATE_SAMPLING = Sampling(rounds=7, samples=1, graph_samples=1, sample_ms=2.0, profile_steps=3)
MODULE_SAMPLING = Sampling(rounds=7, samples=1, graph_samples=1, sample_ms=5.0, profile_steps=3)
# GPU ResNet step: 10 rounds of 5 steps = 50 timed steps per provider in eager mode (one sample
# per step); 10 rounds of 2 graph replays in cuda_graph mode.
RESNET_SAMPLING = Sampling(rounds=10, samples=5, graph_samples=2, sample_ms=0.0, profile_steps=3)


@dataclass(frozen=True)
class Case:
    """``op`` on ``shape`` (N, C, H, W) by each of ``providers``, interleaved; lower priority runs first."""

    op: str
    providers: tuple
    shape: tuple
    dtype: str
    layout: str
    shape_set: str
    priority: int
    sampling: Sampling

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.op}-{self.dtype}-{self.layout}-{shape}"


@dataclass(frozen=True)
class ResNetCase:
    """A ResNet training step: batch ``batch`` of ``image``² images, ``dtype`` autocast, channels_last."""

    providers: tuple
    depth: int
    batch: int
    image: int
    priority: int
    sampling: Sampling
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
        return f"{self.op}-{self.dtype}-b{self.batch}-{self.image}px"


def _gate(shapes, shape_set, dtypes, layouts, providers, priority, sampling):
    return [
        Case(op, providers, shape, dtype, layout, shape_set, priority, sampling)
        for dtype in dtypes
        for layout in layouts
        for shape in shapes
        for op in GATE_OPS
    ]


def gate_cases(quick: bool) -> list[Case]:
    if quick:
        # torch.compile costs seconds per shape on CPU: compiled on one of the two quick configs.
        q = QUICK_SAMPLING
        return _gate([QUICK_GATE_SHAPE], "quick", ["fp32"], ["nchw"], GATE_PROVIDERS, 0, q) + _gate(
            [QUICK_GATE_SHAPE], "quick", ["bf16"], ["channels_last"], ("released", "eager_paper", "fused"), 0, q
        )
    both = ["nchw", "channels_last"]
    no_compile = ("released", "eager_paper", "fused")
    s = GATE_SAMPLING
    return (
        _gate(RESNET50_BAM_SHAPES, "resnet50", ["bf16"], both, GATE_PROVIDERS, 0, s)
        + _gate(CIFAR_BAM_SHAPES, "cifar", ["bf16"], ["nchw"], GATE_PROVIDERS, 3, s)
        + _gate(CIFAR_BAM_SHAPES, "cifar", ["bf16"], ["channels_last"], no_compile, 3, s)
        + _gate(RESNET50_BAM_SHAPES, "resnet50", ["fp16", "fp32"], ["nchw"], ("released", "fused"), 4, s)
    )


def module_cases(quick: bool) -> list[Case]:
    """BAM forward+backward (train mode); bf16 means under bf16 autocast with fp32 weights."""
    if quick:
        return [
            Case(
                "bam_module", MODULE_PROVIDERS, QUICK_MODULE_SHAPE, "fp32", "channels_last", "quick", 0, QUICK_SAMPLING
            )
        ]
    # Same shapes, dtype and layout as the ResNet step, so its compiled BAMs hit inductor's cache.
    return [
        Case("bam_module", MODULE_PROVIDERS, shape, "bf16", "channels_last", "resnet50", 2, MODULE_SAMPLING)
        for shape in RESNET50_BAM_SHAPES
    ] + [
        Case("bam_module", ("released", "eager", "fused"), shape, "bf16", "channels_last", "cifar", 3, MODULE_SAMPLING)
        for shape in CIFAR_BAM_SHAPES
    ]


def resnet_cases(quick: bool) -> list[ResNetCase]:
    if quick:
        # ResNet-18 in fp32: on CPU bf16 convolutions and compiling ResNet-50's wider BAMs take minutes.
        return [ResNetCase(RESNET_PROVIDERS, 18, 2, 32, 0, QUICK_SAMPLING, "fp32", shape_set="quick")]
    return [ResNetCase(RESNET_PROVIDERS, depth=50, batch=64, image=224, priority=1, sampling=RESNET_SAMPLING)]
