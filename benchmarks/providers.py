"""The implementations compared, and the steps each is timed by; shared by the benchmarks and the GPU tests.

Gate providers (x (N, C, H, W); mc (N, C, 1, 1); ms (N, 1, H, W); all in x's dtype, standard
normal, so that σ is neither saturated nor flat):

    released     the released code's gate: ``(1 + σ(mc.expand_as(x) · ms.expand_as(x))) · x``, in x's dtype
    eager_paper  the paper's form, sum: ``x + x · σ(mc.expand_as(x) + ms.expand_as(x))``
    fused        ``bam_fused.bam_gate(..., combine="product", backend="triton")``
    compiled     ``torch.compile`` of ``released`` (static shapes)

Module and ResNet providers all compute the released code's BAM (:data:`BENCH_VARIANT`: no final
BNs, product), so that every speedup is against the function users of that code run:

    released     the authors' module (``benchmarks/released_bam.py``): under autocast its branches
                 and its gate run in x's dtype, as users of the released code run it
    eager        ``bam_fused.BAM``: its gate is the float32 reference (upcasts a half x)
    fused        ``bam_fused.FusedBAM(backend="triton")``
    compiled     ``torch.compile`` of ``eager`` (in the ResNet: bam1..bam3 compiled)
    fused_compiled         ``torch.compile`` of ``fused``, in compiled's mode: the whole module as the
                           ``bam_fused::module`` op pair
    fused_reduce_overhead  ``torch.compile(mode="reduce-overhead")`` of ``fused``: those ops replayed
                           in inductor's CUDA graphs (not captured again in cuda_graph mode:
                           :data:`SELF_GRAPHED`)
    none         (ResNet only) no BAM at all: the floor the others' overhead is measured from
"""

import torch
import torch.nn.functional as F

from bam_fused import BAM, FusedBAM, bam_gate, reference
from bam_fused.common import DTYPES, LAYOUTS
from bam_fused.models import resnet_bam

from .released_bam import BAM as ReleasedBAM

# The combine each gate provider computes, so each can be checked against the reference.
GATE_COMBINE = {"released": "product", "eager_paper": "sum", "fused": "product", "compiled": "product"}
# The BAM every module and ResNet provider computes: the released code's.
BENCH_VARIANT = "official"
# Providers that replay CUDA graphs of their own: cuda_graph mode does not capture them again.
SELF_GRAPHED = ("fused_reduce_overhead",)
# Each provider computing BAM: the module it compiles, and how (None: not compiled; "mode": the
# benchmark's --compile-mode).
_BAM_OF = {
    "released": ("released", None),
    "eager": ("eager", None),
    "fused": ("fused", None),
    "compiled": ("eager", "mode"),
    "fused_compiled": ("fused", "mode"),
    "fused_reduce_overhead": ("fused", "reduce-overhead"),
}
# Agreement each provider must reach with the reference before it is timed, by input dtype.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-3}
# The ResNet's BAMs, by attribute (None in a ResNet built with attention=None).
RESNET_BAMS = ("bam1", "bam2", "bam3")


def gate_released(x, mc, ms):
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
        return compile_fn(gate_released, compile_mode)
    return {"released": gate_released, "eager_paper": gate_eager_paper, "fused": gate_fused}[name]


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


def gate_steps(fn, op: str, sets) -> list:
    """One zero-argument callable per input set (x, mc, ms, g) running ``op`` through gate ``fn``:
    gate_fwd under no_grad; gate_bwd the gradients of all three inputs on a graph built here, the
    forward excluded (built when this is called, so on the stream that is current then);
    gate_fwdbwd both."""

    def fwd(x, mc, ms, g):
        def step():
            with torch.no_grad():
                return fn(x, mc, ms)

        return step

    def bwd(x, mc, ms, g):
        y = fn(x, mc, ms)
        return lambda: torch.autograd.grad(y, (x, mc, ms), g, retain_graph=True)

    def fwdbwd(x, mc, ms, g):
        return lambda: torch.autograd.grad(fn(x, mc, ms), (x, mc, ms), g)

    make = {"gate_fwd": fwd, "gate_bwd": bwd, "gate_fwdbwd": fwdbwd}[op]
    return [make(*s) for s in sets]


def input_set_count(bytes_per_set: int, device, l2_multiple: int = 3, cap: int = 8) -> int:
    """How many input sets to rotate through so that together they exceed L2 ``l2_multiple`` times."""
    if device.type != "cuda":
        return 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
    return max(2, min(cap, -(-l2_multiple * l2 // max(bytes_per_set, 1))))


def autocast_for(dtype: str, device):
    """bf16/fp16 autocast for the module and ResNet cases (fp32 weights, as in training).

    Its weight cache is off: CUDA-graph capture needs it off, torch.compile recompiles when it
    changes (so both modes run alike), and it saves nothing here, where each weight is cast once
    per forward.
    """
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32", cache_enabled=False)


def _compiled(module, provider: str, compile_mode: str):
    """``module`` as ``provider`` runs it: itself, or compiled in the provider's mode."""
    how = _BAM_OF[provider][1]
    return module if how is None else compile_fn(module, compile_mode if how == "mode" else how)


def bam_module(provider: str, channels: int, device, compile_mode: str = "default", layout: str = "nchw", state=None):
    """A train-mode BAM(channels) computing the :data:`BENCH_VARIANT` BAM as ``provider`` runs it,
    holding ``state`` (a state_dict of that BAM, loaded strictly) when given."""
    kind = _BAM_OF[provider][0]
    if kind == "released":
        module = ReleasedBAM(channels)
    elif kind == "fused":
        module = FusedBAM(channels, variant=BENCH_VARIANT, backend="triton")
    else:
        module = BAM(channels, variant=BENCH_VARIANT)
    if state is not None:
        module.load_state_dict(state, strict=True)
    module = module.to(device=device, memory_format=LAYOUTS[layout]).train()
    return _compiled(module, provider, compile_mode)


def module_steps(module, sets, dtype: str, device) -> list:
    """One zero-argument train-mode forward+backward of ``module`` per input set (x, g), x and g
    (N, C, H, W): parameter gradients and x's cleared first, as a training loop finds them (x is
    an activation there: its gradient is handed on, never accumulated into)."""

    def make(x, g):
        def step():
            with autocast_for(dtype, device):
                y = module(x)
            module.zero_grad(set_to_none=True)
            x.grad = None
            y.backward(g)

        return step

    return [make(x, g) for x, g in sets]


def resnet_weights(depth: int) -> dict:
    """A state_dict every ResNet provider loads: a ResNet-``depth`` with the :data:`BENCH_VARIANT` BAM."""
    return resnet_bam(
        depth, network_type="ImageNet", num_classes=1000, attention="bam", variant=BENCH_VARIANT
    ).state_dict()


def resnet_model(provider: str, depth: int, device, compile_mode: str = "default", state=None):
    """A channels_last train-mode ResNet (ImageNet stem) with BAM as ``provider`` runs it, holding
    ``state`` (from :func:`resnet_weights`; the backbone's part for "none") when given."""
    # The released code's BAMs replace eager ones below: released and eager build "bam".
    attention = {"released": "bam", "eager": "bam", "fused": "fused", None: None}[_BAM_OF.get(provider, (None,))[0]]
    kwargs = {"backend": "triton"} if attention == "fused" else {}
    if attention is not None:
        kwargs["variant"] = BENCH_VARIANT
    model = resnet_bam(depth, network_type="ImageNet", num_classes=1000, attention=attention, **kwargs)
    if provider == "released":
        for name in RESNET_BAMS:
            bam = getattr(model, name)
            released = ReleasedBAM(bam.gate_channel)
            released.load_state_dict(bam.state_dict(), strict=True)  # the released ResNet's initialisation
            setattr(model, name, released)
    if state is not None:
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    for name in RESNET_BAMS if attention is not None else ():
        setattr(model, name, _compiled(getattr(model, name), provider, compile_mode))
    return model.to(device=device, memory_format=torch.channels_last).train()


def resnet_batches(batch: int, image: int, device, count: int) -> list:
    """``count`` random (images (batch, 3, image, image) channels_last, labels (batch,)) pairs."""
    return [
        (
            torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 1000, (batch,), device=device),
        )
        for _ in range(count)
    ]


def resnet_steps(model, batches, device, dtype: str = "bf16") -> list:
    """One zero-argument SGD training step of ``model`` per batch of ``batches`` (one optimizer
    for all), autocast ``dtype``; each returns its loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def make(x, y):
        def step():
            with autocast_for(dtype, device):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        return step

    return [make(x, y) for x, y in batches]


def resnet_step(model, batch: int, image: int, device, dtype: str = "bf16"):
    """A zero-argument SGD training step of ``model`` on one fixed random batch (autocast ``dtype``)."""
    return resnet_steps(model, resnet_batches(batch, image, device, 1), device, dtype)[0]
