"""Rebuild the ResNet+BAM that a checkpoint was saved from, reading its arguments off the checkpoint.

Depth, stem, number of classes, whether BAM is present, its variant (final BNs or not), branches,
reduction ratio and number of dilated convolutions are all visible in the state dict's keys and
shapes. The dilation and the combine are not (a dilated 3×3 convolution has the same weights at any
dilation): they come from the ``args`` that ``bam-train`` saves beside the weights, and otherwise
default to the released code's (dilation 4, the variant's own combine).
"""

import re
from collections.abc import Mapping

import torch

from .checkpoint import extract_state_dict, load_released_checkpoint
from .resnet import DEPTHS, Bottleneck, ResNetBAM, resnet_bam

_BLOCK_KEY = re.compile(r"layer(\d)\.(\d+)\.")


def resnet_bam_arguments(checkpoint: Mapping) -> dict:
    """The :func:`resnet_bam` keyword arguments that rebuild the model of ``checkpoint``.

    ``checkpoint``: a released-format dict (``{'state_dict', ...}``, ``module.`` prefixes allowed,
    ``args`` as ``bam-train`` writes them optional) or a plain state dict. Raises ValueError when
    the keys are not those of a :class:`ResNetBAM`.
    """
    state = extract_state_dict(checkpoint)
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError(f"not a ResNetBAM state dict (no conv1.weight / fc.weight); keys start {sorted(state)[:5]}")
    blocks = [0, 0, 0, 0]
    for key in state:
        if m := _BLOCK_KEY.match(key):
            layer, index = int(m[1]) - 1, int(m[2])
            blocks[layer] = max(blocks[layer], index + 1)
    bottleneck = "layer1.0.conv3.weight" in state
    depth = next(
        (d for d, (block, layers) in DEPTHS.items() if tuple(blocks) == layers and (block is Bottleneck) == bottleneck),
        None,
    )
    if depth is None:
        raise ValueError(f"blocks per layer {blocks} ({'Bottleneck' if bottleneck else 'BasicBlock'}) match no depth")
    arguments = {
        "depth": depth,
        "network_type": "ImageNet" if state["conv1.weight"].shape[-1] == 7 else "CIFAR10",
        "num_classes": state["fc.weight"].shape[0],
    }
    has = {branch: any(k.startswith(f"bam1.{branch}_att.") for k in state) for branch in ("channel", "spatial")}
    if not any(has.values()):
        return {**arguments, "attention": None}
    branches = "both" if all(has.values()) else "channel" if has["channel"] else "spatial"
    if has["channel"]:
        hidden, channels = state["bam1.channel_att.gate_c.gate_c_fc_0.weight"].shape
    else:
        hidden, channels = state["bam1.spatial_att.gate_s.gate_s_conv_reduce0.weight"].shape[:2]
    paper = any(k.startswith("bam1.") and "_bn_final." in k for k in state)
    arguments.update(variant="paper" if paper else "official", branches=branches, reduction_ratio=channels // hidden)
    saved_args = checkpoint.get("args", {})  # bam-train's, every value a string
    if has["spatial"]:
        dilated = {k.split(".")[3] for k in state if k.startswith("bam1.spatial_att.gate_s.gate_s_conv_di_")}
        arguments.update(dilation_conv_num=len(dilated), dilation_val=int(saved_args.get("dilation", 4)))
    if saved_args.get("combine", "None") != "None":
        arguments["combine"] = saved_args["combine"]
    return arguments


def resnet_bam_from_checkpoint(checkpoint, attention: str = "fused", map_location="cpu") -> ResNetBAM:
    """The model ``checkpoint`` was saved from, with its weights loaded strictly, in eval mode.

    Args:
        checkpoint: a path to a ``torch.save`` file or the loaded object: a released-format or
            ``bam-train`` checkpoint, or a plain ResNetBAM state dict.
        attention: "fused" (FusedBAM) or "bam" (eager BAM), where the checkpoint has BAM.
        map_location: passed to ``torch.load``.
    """
    if not isinstance(checkpoint, Mapping):
        # weights_only=False: released and bam-train checkpoints pickle the optimizer state alongside.
        checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=False)
    arguments = resnet_bam_arguments(checkpoint)
    arguments.setdefault("attention", attention)  # set already (None) where the checkpoint has no BAM
    model = resnet_bam(**arguments)
    load_released_checkpoint(model, checkpoint, strict=True)
    return model.eval()
