"""The implementations compared, shared by the benchmarks and the GPU tests.

Gate providers (x (N, C, H, W); mc (N, C, 1, 1); ms (N, 1, H, W); all in x's dtype, standard
normal, so that σ is neither saturated nor flat):

    eager        the released code's gate: ``(1 + σ(mc.expand_as(x) · ms.expand_as(x))) · x``
    eager_paper  the paper's form, sum: ``x + x · σ(mc.expand_as(x) + ms.expand_as(x))``
    fused        ``bam_fused.bam_gate(..., combine="product", backend="triton")``
    compiled     ``torch.compile`` of ``eager`` (static shapes)

Modules: eager ``BAM`` vs ``FusedBAM`` vs ``torch.compile(BAM)``. ResNet-50 training step:
no attention vs eager BAM vs FusedBAM vs eager BAM with bam1..bam3 compiled.
"""

import itertools

import torch
import torch.nn.functional as F

from bam_fused import BAM, FusedBAM, bam_gate, reference
from bam_fused.common import DTYPES, LAYOUTS
from bam_fused.models import resnet_bam

# The combine each gate provider computes, so each can be checked against the reference.
GATE_COMBINE = {"eager": "product", "eager_paper": "sum", "fused": "product", "compiled": "product"}


def gate_eager(x, mc, ms):
    # One definition of the released code's gate, shared with ``python -m bam_fused``.
    return reference.released_code_gate(x, mc.flatten(1), ms[:, 0], "product")


def gate_eager_paper(x, mc, ms):
    return x + x * torch.sigmoid(mc.expand_as(x) + ms.expand_as(x))


def gate_fused(x, mc, ms):
    return bam_gate(x, mc, ms, combine="product", backend="triton")


def _allow_recompiles() -> None:
    # Every benchmark shape is a recompile of the same code object; past dynamo's default limit
    # (8) it would silently fall back to eager and the "compiled" numbers would be eager ones.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)


def compile_fn(fn, mode: str):
    """``torch.compile`` with static shapes; ``mode="default"`` is torch.compile's default."""
    _allow_recompiles()
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)


def gate_provider(name: str, compile_mode: str = "default"):
    """The gate function of provider ``name`` (see the module docstring)."""
    if name == "compiled":
        return compile_fn(gate_eager, compile_mode)
    return {"eager": gate_eager, "eager_paper": gate_eager_paper, "fused": gate_fused}[name]


def gate_reference(x, mc, ms, provider: str):
    """What provider ``provider`` must compute, by :mod:`bam_fused.reference` (float32 math)."""
    n, c, h, w = x.shape
    return reference.bam_gate(x, mc.reshape(n, c), ms.reshape(n, h, w), GATE_COMBINE[provider], True)


def gate_inputs(shape, dtype: str, layout: str, device, requires_grad: bool = False):
    """Random (x, mc, ms, g), standard normal: x and g (N, C, H, W) in ``layout``, mc (N, C, 1, 1),
    ms (N, 1, H, W)."""
    n, c, h, w = shape
    dt = DTYPES[dtype]
    fmt = LAYOUTS[layout]
    x = torch.randn(shape, device=device, dtype=dt).contiguous(memory_format=fmt)
    g = torch.randn(shape, device=device, dtype=dt).contiguous(memory_format=fmt)
    mc = torch.randn(n, c, 1, 1, device=device, dtype=dt)
    ms = torch.randn(n, 1, h, w, device=device, dtype=dt)
    for t in (x, mc, ms):
        t.requires_grad_(requires_grad)
    return x, mc, ms, g


def input_set_count(bytes_per_set: int, device, l2_multiple: int = 3, cap: int = 8) -> int:
    """How many input sets to rotate through so that together they exceed L2 ``l2_multiple`` times."""
    if device.type != "cuda":
        return 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
    return max(2, min(cap, -(-l2_multiple * l2 // max(bytes_per_set, 1))))


def rotating(items):
    """A zero-argument callable returning the next item of ``items`` on each call, round robin."""
    it = itertools.cycle(items)
    return lambda: next(it)


def autocast_for(dtype: str, device):
    """bf16/fp16 autocast for the module and ResNet cases (fp32 weights, as in training)."""
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")


def bam_module(provider: str, channels: int, device, compile_mode: str = "default", layout: str = "nchw"):
    """A train-mode BAM(channels) (paper variant) as provider ``provider`` runs it."""
    cls = FusedBAM if provider == "fused" else BAM
    kwargs = {"backend": "triton"} if provider == "fused" else {}
    module = cls(channels, **kwargs).to(device=device, memory_format=LAYOUTS[layout]).train()
    return compile_fn(module, compile_mode) if provider == "compiled" else module


def resnet_model(provider: str, depth: int, device, compile_mode: str = "default"):
    """A channels_last train-mode ResNet (ImageNet stem) with BAM as ``provider`` asks."""
    attention = {"none": None, "eager": "bam", "fused": "fused", "compiled": "bam"}[provider]
    kwargs = {"backend": "triton"} if provider == "fused" else {}
    model = resnet_bam(depth, network_type="ImageNet", num_classes=1000, attention=attention, **kwargs)
    if provider == "compiled":
        for name in ("bam1", "bam2", "bam3"):
            setattr(model, name, compile_fn(getattr(model, name), compile_mode))
    return model.to(device=device, memory_format=torch.channels_last).train()


def resnet_step(model, batch: int, image: int, device, dtype: str = "bf16"):
    """A zero-argument SGD training step of ``model`` on one fixed random batch (autocast ``dtype``)."""
    x = torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with autocast_for(dtype, device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step
