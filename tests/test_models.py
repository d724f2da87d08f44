"""resnet_bam: the released ResidualNet's keys and shapes, both stems, init, fused == eager."""

import pytest
import torch
from torch import nn

from bam_fused import BAM, FusedBAM
from bam_fused.models import resnet_bam

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": ((c,) if k != "num_batches_tracked" else ()) for k in BN}


def _bam(prefix: str, c: int, final_bn: bool = True, r: int = 16) -> dict:
    """The released BAM's keys (ARCHITECTURE.md: state-dict keys), written out rather than read from our modules."""
    h = c // r
    g, s = f"{prefix}.channel_att.gate_c", f"{prefix}.spatial_att.gate_s"
    keys = {f"{g}.gate_c_fc_0.weight": (h, c), f"{g}.gate_c_fc_0.bias": (h,)}
    keys |= _bn(f"{g}.gate_c_bn_1", h)
    keys |= {f"{g}.gate_c_fc_final.weight": (c, h), f"{g}.gate_c_fc_final.bias": (c,)}
    keys |= {f"{s}.gate_s_conv_reduce0.weight": (h, c, 1, 1), f"{s}.gate_s_conv_reduce0.bias": (h,)}
    keys |= _bn(f"{s}.gate_s_bn_reduce0", h)
    for i in range(2):
        keys |= {f"{s}.gate_s_conv_di_{i}.weight": (h, h, 3, 3), f"{s}.gate_s_conv_di_{i}.bias": (h,)}
        keys |= _bn(f"{s}.gate_s_bn_di_{i}", h)
    keys |= {f"{s}.gate_s_conv_final.weight": (1, h, 1, 1), f"{s}.gate_s_conv_final.bias": (1,)}
    if final_bn:
        keys |= _bn(f"{g}.gate_c_bn_final", c) | _bn(f"{s}.gate_s_bn_final", 1)
    return keys


def expected_keys(depth: int, num_classes: int = 1000, stem: int = 7, bam: str | None = "paper") -> dict:
    """torchvision-style ResNet keys (the released code's names) plus bam1..bam3."""
    bottleneck = depth == 50
    blocks = (3, 4, 6, 3) if depth == 50 else (2, 2, 2, 2)
    e = 4 if bottleneck else 1
    keys = {"conv1.weight": (64, 3, stem, stem)} | _bn("bn1", 64)
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            if bottleneck:
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                keys |= _bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", planes * 4)
            else:
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                keys |= _bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes)
            if j == 0 and (i > 1 or bottleneck):
                keys[f"{p}.downsample.0.weight"] = (planes * e, inplanes, 1, 1)
                keys |= _bn(f"{p}.downsample.1", planes * e)
            inplanes = planes * e
    if bam is not None:
        for i, c in enumerate((64, 128, 256), start=1):
            keys |= _bam(f"bam{i}", c * e, final_bn=bam == "paper")
    return keys | {"fc.weight": (num_classes, 512 * e), "fc.bias": (num_classes,)}


def _shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_state_dict_matches_released_layout(depth, variant):
    model = resnet_bam(depth, attention="bam", variant=variant)
    assert _shapes(model) == expected_keys(depth, bam=variant)


def test_state_dict_spot_checks():
    # A few literal keys, in case the generator above and the model shared a mistake.
    sd = resnet_bam(50, "CIFAR100", 100, attention="fused").state_dict()
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.5.bn3.running_var"].shape == (1024,)
    assert sd["bam3.channel_att.gate_c.gate_c_fc_0.weight"].shape == (64, 1024)
    assert sd["bam1.spatial_att.gate_s.gate_s_conv_di_1.weight"].shape == (16, 16, 3, 3)
    assert sd["bam2.spatial_att.gate_s.gate_s_bn_final.weight"].shape == (1,)
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["fc.weight"].shape == (100, 2048)


def test_fused_and_eager_and_plain_keys():
    fused, eager = resnet_bam(18, attention="fused"), resnet_bam(18, attention="bam")
    assert _shapes(fused) == _shapes(eager)
    assert all(isinstance(getattr(fused, f"bam{i}"), FusedBAM) for i in (1, 2, 3))
    assert type(eager.bam1) is BAM
    plain = resnet_bam(18, attention=None)
    assert _shapes(plain) == expected_keys(18, bam=None)
    assert plain.bam1 is None and not any(isinstance(m, BAM) for m in plain.modules())


@pytest.mark.parametrize("depth, params", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)])
def test_plain_parameter_counts_match_standard_resnets(depth, params):
    assert sum(p.numel() for p in resnet_bam(depth, attention=None).parameters()) == params


@pytest.mark.parametrize(
    "depth, network_type, num_classes, size",
    [
        (18, "ImageNet", 1000, 64),
        (50, "ImageNet", 7, 48),
        (34, "CIFAR10", 10, 32),
        (101, "CIFAR100", 100, 16),
    ],
)
def test_forward_shapes(depth, network_type, num_classes, size):
    model = resnet_bam(depth, network_type, num_classes, attention="bam").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, num_classes)
        # Non-square input: the global-mean pooling (not the released fixed-size AvgPool) handles it.
        assert model(torch.randn(1, 3, size, size + 16)).shape == (1, num_classes)


def test_stems():
    imagenet, cifar = (
        resnet_bam(18, "ImageNet", attention=None),
        resnet_bam(18, "CIFAR10", 10, attention=None),
    )
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    # The BAM positions see 1/4 of the input side behind the ImageNet stem, full size behind CIFAR's.
    seen = {}
    for name, model in (("imagenet", imagenet), ("cifar", cifar)):
        model.layer1.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
        model.eval()(torch.randn(1, 3, 32, 32))
    assert seen["imagenet"][-1] == 8 and seen["cifar"][-1] == 32


def test_init():
    model = resnet_bam(50, attention="bam")
    conv = model.layer2[0].conv2  # 128 → 128, 3×3: fan_out = 128·9
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            assert torch.all(m.bias == 0)
    s = model.bam1.spatial_att.gate_s.gate_s_conv_reduce0  # 256 → 16, 1×1: fan_out = 16
    assert s.weight.std().item() == pytest.approx((2 / 16) ** 0.5, rel=0.1)


def test_bam_kwargs_pass_through():
    model = resnet_bam(
        18,
        "CIFAR10",
        10,
        attention="fused",
        variant="official",
        combine="max",
        reduction_ratio=8,
        dilation_val=2,
        branches="channel",
        backend="reference",
    )
    b = model.bam2
    assert (b.combine, b.reduction_ratio, b.dilation_val, b.branches, b.gate_backend) == (
        "max",
        8,
        2,
        "channel",
        "reference",
    )
    assert b.spatial_att is None and b.channel_att.gate_c.gate_c_fc_0.out_features == 128 // 8
    assert not hasattr(b.channel_att.gate_c, "gate_c_bn_final")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=20), "depth"),
        (dict(depth=18, network_type="cifar"), "network_type"),
        (dict(depth=18, attention="cbam"), "attention"),
        (dict(depth=18, attention=None, reduction_ratio=8), "attention=None"),
        (dict(depth=18, attention="bam", backend="triton"), "backend"),
        (dict(depth=18, variant="v2"), "variant"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet_bam(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 16, 16\)"):
        resnet_bam(18, "CIFAR10", 10, attention=None)(torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("train", [False, True])
def test_fused_matches_eager_with_same_weights(train):
    # The fused gate runs the Triton kernels here (through the interpreter without CUDA).
    eager = resnet_bam(18, "CIFAR10", 10, attention="bam").double()
    fused = resnet_bam(18, "CIFAR10", 10, attention="fused").double()
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    if not train:  # non-trivial running statistics for eval mode
        with torch.no_grad():
            eager.train()(torch.randn(4, 3, 8, 8, dtype=torch.float64))
        fused.load_state_dict(eager.state_dict())
    outs, grads = [], []
    for model in (eager, fused):
        model.train(train)
        xi = x.clone().requires_grad_()
        y = model(xi)
        (y * torch.linspace(-1, 1, 10, dtype=torch.float64)).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    for gf, ge in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(gf, ge, rtol=1e-6, atol=1e-7)  # BN on 2×2 maps amplifies ulps
    if train:  # running statistics updated identically
        for (k, a), b in zip(eager.state_dict().items(), fused.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, msg=k)
