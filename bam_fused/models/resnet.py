"""ResNet with BAM at the bottlenecks, laid out like the released ``ResidualNet``.

Module and parameter names follow the authors' released code (``conv1``, ``bn1``,
``layer{i}.{j}.conv{k}``/``bn{k}``/``downsample.{0,1}``, ``bam1..bam3``, ``fc``), so its
checkpoints load with ``strict=True`` into ``variant="official"``.
"""

import torch
from torch import nn

from ..modules import BAM, FusedBAM

NETWORK_TYPES = ("ImageNet", "CIFAR10", "CIFAR100")
ATTENTIONS = ("fused", "bam", None)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual: (N, inplanes, H, W) → (N, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 with a residual: (N, inplanes, H, W) → (N, 4·planes, H/s, W/s)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBAM(nn.Module):
    """ResNet with optional BAM after layer1, layer2 and layer3 (never after layer4).

    Input (N, 3, H, W) → logits (N, num_classes). The released code pools with a fixed
    ``AvgPool2d(7)`` (ImageNet) or ``avg_pool2d(x, 4)`` (CIFAR); this uses the global mean,
    which is the same at 224×224 / 32×32 and also works at other sizes (no parameters, so the
    state_dict is unchanged).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        network_type: str = "ImageNet",
        num_classes: int = 1000,
        bam_factory=None,
    ):
        super().__init__()
        self.network_type = network_type
        self.inplanes = 64
        if network_type == "ImageNet":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        e = block.expansion
        if bam_factory is None:
            self.bam1 = self.bam2 = self.bam3 = None
        else:
            self.bam1, self.bam2, self.bam3 = (bam_factory(c * e) for c in (64, 128, 256))
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * e, num_classes)
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # The released code initialises every key containing "conv" (BAM's convs included) with
        # Kaiming fan_out, every "bn" weight with 1 and every bias with 0; the same here, by
        # module type, so that BAM's spatial convolutions start like the paper's runs did.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m is not self.fc:
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (N, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer, bam in ((self.layer1, self.bam1), (self.layer2, self.bam2), (self.layer3, self.bam3)):
            x = layer(x)
            if bam is not None:
                x = bam(x)
        x = self.avgpool(self.layer4(x))
        return self.fc(torch.flatten(x, 1))


def resnet_bam(
    depth: int,
    network_type: str = "ImageNet",
    num_classes: int = 1000,
    attention: str | None = "fused",
    variant: str = "paper",
    **bam_kwargs,
) -> ResNetBAM:
    """The released ``ResidualNet(network_type, depth, num_classes, "BAM")``, with our BAM.

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101 (Bottleneck; BAM widths 256, 512, 1024).
        network_type: "ImageNet" (7×7/2 conv + 3×3/2 max-pool stem) or "CIFAR10"/"CIFAR100"
            (3×3/1 conv stem, no max-pool). ``num_classes`` is independent of it.
        num_classes: width of ``fc``.
        attention: "fused" (:class:`FusedBAM`), "bam" (eager :class:`BAM`) or None (plain ResNet).
        variant: BAM's "paper" or "official" variant (see :class:`BAM`).
        **bam_kwargs: passed to every BAM: ``reduction_ratio``, ``dilation_conv_num``,
            ``dilation_val``, ``combine``, ``branches`` and, for "fused", ``backend``.

    Initialisation: backbone convolutions Kaiming normal (fan_out; ``downsample.0`` too, which
    the released code leaves at PyTorch's default because its key lacks "conv"), BatchNorms
    weight 1 and bias 0, ``fc`` Kaiming normal (fan_in) with bias 0, as the released code. BAM branches
    follow the released code too: their convolutions Kaiming normal (fan_out) with zero bias,
    their BatchNorms (final ones included) 1/0, their Linear layers PyTorch's default weights
    with zero bias.

    Returns:
        A :class:`ResNetBAM`: (N, 3, H, W) → (N, num_classes).
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {tuple(DEPTHS)}, got {depth!r}")
    if network_type not in NETWORK_TYPES:
        raise ValueError(f"network_type must be one of {NETWORK_TYPES}, got {network_type!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention is None and bam_kwargs:
        raise ValueError(f"attention=None takes no BAM arguments, got {sorted(bam_kwargs)}")
    if attention == "bam" and "backend" in bam_kwargs:
        raise ValueError("backend is a FusedBAM argument; use attention='fused' to choose it")
    block, layers = DEPTHS[depth]
    factory = None
    if attention is not None:
        cls = FusedBAM if attention == "fused" else BAM
        factory = lambda channels: cls(channels, variant=variant, **bam_kwargs)
    return ResNetBAM(block, layers, network_type, num_classes, factory)
