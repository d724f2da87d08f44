"""ResNet with BAM (the released ``ResidualNet`` layout) and released-checkpoint loading."""

from .checkpoint import extract_state_dict, load_released_checkpoint
from .rebuild import resnet_bam_arguments, resnet_bam_from_checkpoint
from .resnet import BasicBlock, Bottleneck, ResNetBAM, resnet_bam

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNetBAM",
    "extract_state_dict",
    "load_released_checkpoint",
    "resnet_bam",
    "resnet_bam_arguments",
    "resnet_bam_from_checkpoint",
]
