"""pytorchcv's ``BamBlock`` (``pytorchcv.models.bamresnet``) read as the released code's BAM.

pytorchcv 0.0.74 ships the only pretrained BAM-ResNets on the package index. Its ``BamBlock`` computes
the released code's math, ``x · (1 + σ(Mc · Ms))`` with no final BNs and the global mean as pooling
(``AdaptiveAvgPool2d(1)``), which is ``variant="official"``; only the names differ:

    ch_att.init_fc.fc / .bn        → channel_att.gate_c.gate_c_fc_0 / gate_c_bn_1
    ch_att.final_fc                → channel_att.gate_c.gate_c_fc_final
    sp_att.init_conv.conv / .bn    → spatial_att.gate_s.gate_s_conv_reduce0 / gate_s_bn_reduce0
    sp_att.dil_convs.conv{i+1}.*   → spatial_att.gate_s.gate_s_conv_di_{i} / gate_s_bn_di_{i}
    sp_att.final_conv              → spatial_att.gate_s.gate_s_conv_final

The block is recognised by its class name and layout, so pytorchcv need not be installed.
"""

from torch import nn

PYTORCHCV_BAM_CLASS = "BamBlock"


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"pytorchcv BamBlock: {what}; cannot convert it to FusedBAM(variant='official')")


def pytorchcv_bam_parts(module: nn.Module) -> tuple[dict, dict[str, nn.Module]] | None:
    """Read a pytorchcv ``BamBlock``: (BAM arguments, {our submodule path: its submodule}), else None.

    The arguments (``gate_channel``, ``reduction_ratio``, ``dilation_conv_num``, ``dilation_val``)
    build a BAM with submodules of the same shapes at the returned paths, so the block's own Linear,
    Conv2d and BatchNorm modules can be adopted there: weights, buffers, eps, momentum, padding,
    device, dtype and mode stay theirs. What is not adopted (the ReLUs, the pooling, the forward)
    is checked to be what BAM does; a ``BamBlock`` laid out otherwise (e.g. with a second dense
    layer) is a ValueError naming the difference.
    """
    if type(module).__name__ != PYTORCHCV_BAM_CLASS or not hasattr(module, "ch_att") or not hasattr(module, "sp_att"):
        return None
    ch, sp = module.ch_att, module.sp_att
    _require(len(ch.main_fcs) == 0, f"ch_att.main_fcs has {len(ch.main_fcs)} dense layers, BAM has none")
    _require(isinstance(ch.pool, nn.AdaptiveAvgPool2d) and ch.pool.output_size in (1, (1, 1)), "pooling is not global")
    conv_blocks = {"init_conv": sp.init_conv, **{f"dil_convs.{n}": b for n, b in sp.dil_convs.named_children()}}
    for name, block in conv_blocks.items():
        _require(
            block.normalize and block.activate and isinstance(block.activ, nn.ReLU) and not block.use_pad,
            f"sp_att.{name} is not conv → BN → ReLU",
        )
    channels, hidden = ch.init_fc.fc.in_features, ch.init_fc.fc.out_features
    reduction_ratio = channels // hidden
    _require(channels // reduction_ratio == hidden, f"{channels} → {hidden} channels is not C // r for an integer r")
    dilated = list(sp.dil_convs.children())
    dilations = {block.conv.dilation for block in dilated}
    _require(len(dilations) <= 1, f"the dilated convolutions differ in dilation: {sorted(dilations)}")
    config = {
        "gate_channel": channels,
        "reduction_ratio": reduction_ratio,
        "dilation_conv_num": len(dilated),
        "dilation_val": dilated[0].conv.dilation[0] if dilated else 4,
    }
    parts = {
        "channel_att.gate_c.gate_c_fc_0": ch.init_fc.fc,
        "channel_att.gate_c.gate_c_bn_1": ch.init_fc.bn,
        "channel_att.gate_c.gate_c_fc_final": ch.final_fc,
        "spatial_att.gate_s.gate_s_conv_reduce0": sp.init_conv.conv,
        "spatial_att.gate_s.gate_s_bn_reduce0": sp.init_conv.bn,
        "spatial_att.gate_s.gate_s_conv_final": sp.final_conv,
    }
    for i, block in enumerate(dilated):
        parts[f"spatial_att.gate_s.gate_s_conv_di_{i}"] = block.conv
        parts[f"spatial_att.gate_s.gate_s_bn_di_{i}"] = block.bn
    return config, parts
