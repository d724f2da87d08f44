"""BAM as nn.Modules: eager ``BAM`` and ``FusedBAM`` (the branches: :mod:`bam_fused.branches`).

Submodule and parameter names are the released code's, so its checkpoints load strictly into
``variant="official"``. ``FusedBAM`` is a ``BAM`` whose gate runs the Triton kernels; the
convolutions and the MLP stay in cuDNN/cuBLAS.
"""

import warnings

import torch
from torch import nn

from .branches import ChannelGate, SpatialGate
from .common import BACKENDS, BRANCHES, COMBINES, VARIANT_COMBINE, VARIANTS
from .fused_bam import fused_bam, fused_bam_op
from .fused_path import check_fused_path, traced_fused_call
from .ops import bam_gate
from .pytorchcv_layout import pytorchcv_bam_parts


class BAM(nn.Module):
    """Bottleneck Attention Module, eager PyTorch: ``F + F ⊗ σ(Mc(F) ⊕ Ms(F))``.

    Args:
        gate_channel: C of the input (N, C, H, W), ≥ 1.
        reduction_ratio: r ≥ 1; the branches are C // r wide (must be ≥ 1).
        dilation_conv_num: number of dilated 3×3 convolutions in the spatial branch, ≥ 0.
        dilation_val: their dilation d (and padding), ≥ 1.
        variant: "paper" (final BNs, sum) or "official" (the released code: no final BNs, product).
        combine: "sum", "product" or "max"; None takes the variant's own.
        branches: "both", or "channel" / "spatial" alone (the paper's ablation).
    """

    def __init__(
        self,
        gate_channel: int,
        reduction_ratio: int = 16,
        dilation_conv_num: int = 2,
        dilation_val: int = 4,
        *,
        variant: str = "paper",
        combine: str | None = None,
        branches: str = "both",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if combine is not None and combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES} or None, got {combine!r}")
        if branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}")
        for name, value, least in (
            ("gate_channel", gate_channel, 1),
            ("reduction_ratio", reduction_ratio, 1),
            ("dilation_conv_num", dilation_conv_num, 0),
            ("dilation_val", dilation_val, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if gate_channel // reduction_ratio < 1:
            raise ValueError(
                f"gate_channel // reduction_ratio must be >= 1, got {gate_channel} // {reduction_ratio} = "
                f"{gate_channel // reduction_ratio}"
            )
        self.gate_channel = gate_channel
        self.reduction_ratio = reduction_ratio
        self.dilation_conv_num = dilation_conv_num
        self.dilation_val = dilation_val
        self.variant = variant
        self.combine = combine or VARIANT_COMBINE[variant]
        self.branches = branches
        final_bn = variant == "paper"
        self.channel_att = (
            ChannelGate(gate_channel, reduction_ratio, final_bn=final_bn) if branches != "spatial" else None
        )
        self.spatial_att = (
            SpatialGate(gate_channel, reduction_ratio, dilation_conv_num, dilation_val, final_bn=final_bn)
            if branches != "channel"
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"{self.gate_channel}, reduction_ratio={self.reduction_ratio}, dilation_conv_num="
            f"{self.dilation_conv_num}, dilation_val={self.dilation_val}, variant={self.variant!r}, "
            f"combine={self.combine!r}, branches={self.branches!r}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.gate_channel:
            raise ValueError(
                f"BAM({self.gate_channel}) expects input of shape (N, {self.gate_channel}, H, W), got {tuple(x.shape)}"
            )

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(mc (N, C), ms (N, 1, H, W)) for input x (N, C, H, W); None for an absent branch."""
        self._check_input(x)
        mc = self.channel_att(x) if self.channel_att is not None else None
        ms = self.spatial_att(x) if self.spatial_att is not None else None
        return mc, ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc, ms = self.attention_maps(x)
        return bam_gate(x, mc, ms, combine=self.combine, backend=self.gate_backend)

    gate_backend = "reference"


class FusedBAM(BAM):
    """``BAM`` fused into Triton kernels; same arguments, submodules and state_dict.

    On CUDA (and on CPU under TRITON_INTERPRET=1) the whole module runs as one autograd node:
    one read of x gives the channel branch's pooled means and the spatial branch's 1×1 reduce,
    the channel MLP runs in one kernel each way, the gate in one, and the backward writes x's
    gradient once (:mod:`bam_fused.fused_bam`). Where that path cannot reproduce the eager
    module exactly (hooks on a submodule, SyncBatchNorm, torch.compile, …;
    :func:`bam_fused.fused_path.fused_path_blocker` says which) the branches run as nn.Modules
    and only the gate is fused.

    ``backend``: "auto" (Triton on CUDA, and on CPU under TRITON_INTERPRET=1), "triton" or
    "reference" (see :func:`bam_fused.bam_gate`).
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.gate_backend = backend

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.gate_backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not torch.compiler.is_compiling():
            call = check_fused_path(self, x)
            if not isinstance(call, str):
                return fused_bam(x, call)
            return super().forward(x)
        # torch.compile traces the check (guarding on what it reads) and records the custom op; a
        # call eager BAM raises for runs the per-op path, which raises it.
        call = traced_fused_call(self, x)
        if isinstance(call, str) or call.error is not None:
            return super().forward(x)
        return fused_bam_op(x, call)


def _released_config(module: nn.Module) -> dict | None:
    """BAM arguments of a module laid out like the released code, or None if it is not one."""
    gate_c = getattr(getattr(module, "channel_att", None), "gate_c", None)
    gate_s = getattr(getattr(module, "spatial_att", None), "gate_s", None)
    if not isinstance(gate_c, nn.Module) or not isinstance(gate_s, nn.Module):
        return None
    fc0 = getattr(gate_c, "gate_c_fc_0", None)
    if not isinstance(fc0, nn.Linear):
        return None
    dilated = [m for name, m in gate_s.named_children() if name.startswith("gate_s_conv_di_")]
    has_final_bn = hasattr(gate_c, "gate_c_bn_final") and hasattr(gate_s, "gate_s_bn_final")
    return {
        "gate_channel": fc0.in_features,
        "reduction_ratio": fc0.in_features // fc0.out_features,
        "dilation_conv_num": len(dilated),
        "dilation_val": dilated[0].dilation[0] if dilated else 4,
        "variant": "paper" if has_final_bn else "official",
    }


# What a BAM computes: a subclass that overrides either would lose it as a FusedBAM.
_BAM_FORWARD_METHODS = ("forward", "attention_maps")


def _overridden(module: BAM) -> list[str]:
    """The methods of :data:`_BAM_FORWARD_METHODS` that ``module``'s class overrides."""
    return [m for m in _BAM_FORWARD_METHODS if getattr(type(module), m) is not getattr(BAM, m)]


def _to_fused(module: nn.Module, backend: str) -> nn.Module | None:
    if isinstance(module, FusedBAM):
        return None
    if isinstance(module, BAM):
        fused = FusedBAM(
            module.gate_channel,
            module.reduction_ratio,
            module.dilation_conv_num,
            module.dilation_val,
            variant=module.variant,
            combine=module.combine,
            branches=module.branches,
            backend=backend,
        )
        # Adopt the branches themselves: parameters keep their identity, so optimizers keep working.
        fused.channel_att = module.channel_att
        fused.spatial_att = module.spatial_att
        return fused.train(module.training)
    pytorchcv = pytorchcv_bam_parts(module)
    if pytorchcv is not None:
        cfg, parts = pytorchcv
        # Mode first, then adopt the block's own modules: each keeps its mode (a frozen BN stays
        # frozen) and its parameters keep their identity, so optimizers keep working.
        fused = FusedBAM(**cfg, variant="official", backend=backend).train(module.training)
        for path, part in parts.items():
            parent, name = path.rsplit(".", 1)
            setattr(fused.get_submodule(parent), name, part)
        return fused
    cfg = _released_config(module)
    if cfg is None:
        return None
    fused = FusedBAM(**cfg, backend=backend)
    fused.load_state_dict(module.state_dict(), strict=True)
    ref = next(module.parameters())
    return fused.to(device=ref.device, dtype=ref.dtype).train(module.training)


def convert_to_fused(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every BAM in ``model`` by a FusedBAM, in place, keeping weights, buffers and mode.

    Converts this package's ``BAM`` (sharing its parameters), pytorchcv's ``BamBlock`` (its
    modules adopted into ``variant="official"``, see :mod:`bam_fused.pytorchcv_layout`) and foreign
    modules laid out like the released code (``channel_att.gate_c…``, ``spatial_att.gate_s…``:
    weights copied). A subclass of BAM that overrides its ``forward`` (or ``attention_maps``)
    stays as it is, with a warning naming it. A module registered under several names becomes one
    FusedBAM registered under each. Returns ``model``, or the new FusedBAM when ``model`` itself
    is a BAM.
    """
    done, kept = {}, []
    converted = _convert(model, backend, "", done, kept)
    for path, module in kept:
        warnings.warn(
            f"convert_to_fused left {path or 'the model'} ({type(module).__qualname__}) as it is: it overrides "
            f"BAM.{' and BAM.'.join(_overridden(module))}, which a FusedBAM would not run",
            stacklevel=2,
        )
    return converted


def _convert(module: nn.Module, backend: str, path: str, done: dict, kept: list) -> nn.Module:
    """``module``'s replacement, or ``module`` with its children converted in place. ``done`` maps
    each module met to what it became (its keys keep the originals alive, so no id is reused);
    ``kept`` collects (path, module) of the BAM subclasses left as they are."""
    if module in done:
        return done[module]
    keep = isinstance(module, BAM) and not isinstance(module, FusedBAM) and _overridden(module)
    if keep:
        kept.append((path, module))
    fused = None if keep else _to_fused(module, backend)
    done[module] = fused if fused is not None else module
    if fused is None:
        for name, child in list(module.named_children()):
            new = _convert(child, backend, f"{path}.{name}" if path else name, done, kept)
            if new is not child:
                setattr(module, name, new)
    return done[module]
