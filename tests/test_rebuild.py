"""resnet_bam_from_checkpoint: the model's arguments read off a checkpoint, weights loaded strictly."""

import pytest
import torch

from bam_fused import BAM, FusedBAM
from bam_fused.models import resnet_bam, resnet_bam_arguments, resnet_bam_from_checkpoint
from exact import assert_as_exact_as, float64_copy, randomize_bn

CASES = [
    dict(depth=18, network_type="CIFAR10", num_classes=10, variant="official"),
    dict(depth=34, network_type="ImageNet", num_classes=7, variant="paper", branches="channel", reduction_ratio=8),
    dict(depth=50, network_type="CIFAR10", num_classes=100, variant="paper", branches="spatial", dilation_conv_num=3),
    dict(depth=101, network_type="ImageNet", num_classes=1000, attention=None),
]
DEFAULTS = dict(variant="paper", branches="both", reduction_ratio=16, dilation_conv_num=2, dilation_val=4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"r{c['depth']}-{c.get('branches', c.get('attention'))}")
def test_arguments_from_a_released_format_checkpoint(case):
    source = resnet_bam(**{"attention": "bam", **case})
    released = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    expected = dict(case) if case.get("attention", "bam") is None else {**DEFAULTS, **case}
    if expected.get("branches") == "channel":  # no spatial branch: nothing to read its convolutions from
        del expected["dilation_conv_num"], expected["dilation_val"]
    assert resnet_bam_arguments(released) == expected


def test_dilation_and_combine_come_from_bam_train_args(tmp_path):
    source = resnet_bam(18, "CIFAR10", 10, attention="bam", variant="official", combine="max", dilation_val=2)
    randomize_bn(source)  # not all weights: all-positive ones overflow float32 logits (inf == inf whatever ran)
    args = {"dataset": "cifar10", "dilation": "2", "combine": "max", "reduction": "16"}  # as bam-train saves them
    torch.save({"epoch": 1, "state_dict": source.state_dict(), "args": args}, tmp_path / "ckpt.pth.tar")
    model = resnet_bam_from_checkpoint(tmp_path / "ckpt.pth.tar")
    assert type(model.bam1) is FusedBAM and not model.training
    assert (model.bam1.combine, model.bam1.dilation_val) == ("max", 2)
    x = torch.randn(2, 3, 8, 8)
    exact = float64_copy(source).eval()(x.double())
    assert_as_exact_as(model(x), source.eval()(x), exact, name="logits")
    eager = resnet_bam_from_checkpoint(source.state_dict(), attention="bam")  # no args: the released defaults
    assert type(eager.bam1) is BAM and (eager.bam1.combine, eager.bam1.dilation_val) == ("product", 4)


def test_not_a_resnet_is_refused():
    with pytest.raises(ValueError, match="not a ResNetBAM state dict"):
        resnet_bam_arguments(BAM(64).state_dict())
    state = resnet_bam(18, attention=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer4.1.")}
    with pytest.raises(ValueError, match=r"blocks per layer \[2, 2, 2, 1\] \(BasicBlock\) match no depth"):
        resnet_bam_arguments(state)
