"""The eager branches of BAM: ``ChannelGate`` (Mc) and ``SpatialGate`` (Ms), as nn.Modules.

Submodule and parameter names are the released code's, so its checkpoints load strictly.
"""

import torch
from torch import nn


class ChannelGate(nn.Module):
    """Mc(F) = [BN](MLP(AvgPool(F))): (N, C, H, W) → (N, C).

    The pooling is the global mean over H×W (the released code's avg_pool2d with kernel H is
    the same on square maps and breaks on others).
    """

    def __init__(self, gate_channel: int, reduction_ratio: int = 16, num_layers: int = 1, final_bn: bool = True):
        super().__init__()
        hidden = gate_channel // reduction_ratio
        widths = [gate_channel] + [hidden] * num_layers + [gate_channel]
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", nn.Flatten())
        for i in range(len(widths) - 2):
            self.gate_c.add_module(f"gate_c_fc_{i}", nn.Linear(widths[i], widths[i + 1]))
            self.gate_c.add_module(f"gate_c_bn_{i + 1}", nn.BatchNorm1d(widths[i + 1]))
            self.gate_c.add_module(f"gate_c_relu_{i + 1}", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(widths[-2], widths[-1]))
        if final_bn:
            self.gate_c.add_module("gate_c_bn_final", nn.BatchNorm1d(gate_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_c(x.mean(dim=(2, 3)))


class SpatialGate(nn.Module):
    """Ms(F) = [BN](f1x1(f3x3_d(…f3x3_d(f1x1(F))))): (N, C, H, W) → (N, 1, H, W)."""

    def __init__(
        self,
        gate_channel: int,
        reduction_ratio: int = 16,
        dilation_conv_num: int = 2,
        dilation_val: int = 4,
        final_bn: bool = True,
    ):
        super().__init__()
        hidden = gate_channel // reduction_ratio
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, hidden, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(hidden))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation_val, dilation=dilation_val)
            self.gate_s.add_module(f"gate_s_conv_di_{i}", conv)
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(hidden))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(hidden, 1, kernel_size=1))
        if final_bn:
            self.gate_s.add_module("gate_s_bn_final", nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_s(x)
