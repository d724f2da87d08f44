"""What one train-mode BAM forward+backward costs, counted on any machine: autograd nodes, aten
calls, kernel launches, and the full-size passes over x's size.

    python -m benchmarks.module_cost [--shape N C H W] [--json] [--out FILE.json]

On the GPU host every aten call and launch costs microseconds whatever the map size, so the
counts are the module's host floor; full-size operands are its memory traffic in units of x.
Counted with a ``TorchDispatchMode`` (every aten call below autograd, views and allocations
included) and a hook on Triton's launcher (each launch once; the calls the interpreter makes
inside a launch are not counted). Without CUDA the kernels run through the interpreter.
"""

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bam_fused.common import interpret_without_cuda

interpret_without_cuda()  # before the kernels are imported

# The module's default map: BAM(64) after a CIFAR ResNet-18's layer1, batch 2, 8×8.
DEFAULT_SHAPE = (2, 64, 8, 8)
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


@dataclass
class ModuleCost:
    module: str
    autograd_nodes: int  # nodes the forward records (AccumulateGrad of leaves not counted)
    aten_calls: int  # every aten call, views and allocations included, plus launches
    compute_calls: int  # aten calls that compute (not views, not allocations), plus launches
    launches: int  # Triton kernel launches
    full_size_operands: int  # tensors of x's size read or written, over all calls and launches
    full_size_created: int  # new tensors of x's size


class _Counter(TorchDispatchMode):
    def __init__(self, full: int):
        super().__init__()
        self.full = full
        self.paused = 0
        self.calls = self.compute = self.operands = self.created = self.launches = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        name = func.overloadpacket.__name__
        self.calls += 1
        self.ops.append(name)
        if func.is_view:
            return out
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        self.created += sum(t.numel() == self.full and t.untyped_storage().data_ptr() not in storages for t in outputs)
        if name in ALLOCATIONS:
            return out
        self.compute += 1
        self.operands += sum(t.numel() == self.full for t in inputs + outputs)
        return out

    def launched(self, args) -> None:
        self.calls += 1
        self.compute += 1
        self.launches += 1
        self.ops.append("launch")
        self.operands += sum(isinstance(a, torch.Tensor) and a.numel() == self.full for a in args)


@contextlib.contextmanager
def _count_launches(counter: _Counter):
    """Every Triton launch counted once; aten calls inside it (the interpreter's) are not."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def wrap(run):
        def counted(self, *args, **kwargs):
            counter.launched(args)
            counter.paused += 1
            try:
                return run(self, *args, **kwargs)
            finally:
                counter.paused -= 1

        return counted

    for cls, run in originals.items():
        cls.run = wrap(run)
    try:
        yield
    finally:
        for cls, run in originals.items():
            cls.run = run


def autograd_nodes(out: torch.Tensor) -> int:
    """Nodes of the graph behind ``out``, leaves' AccumulateGrad excluded."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen or type(fn).__name__ == "AccumulateGrad":
            continue
        seen.add(fn)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return len(seen)


def module_cost(module: torch.nn.Module, x: torch.Tensor, name: str = "") -> tuple[ModuleCost, list[str]]:
    """Count one forward+backward of ``module`` (in its current mode) on ``x`` (N, C, H, W), which
    should require grad; returns the counts and the aten ops (and launches) in call order.
    Warms up once first (Triton compiles or interprets, cuDNN picks algorithms)."""
    g = torch.randn_like(x)
    module(x).backward(g)
    module.zero_grad(set_to_none=True)
    x.grad = None
    counter = _Counter(x.numel())
    with _count_launches(counter), counter:
        y = module(x)
        nodes = autograd_nodes(y)
        y.backward(g)
    cost = ModuleCost(
        name or type(module).__name__,
        nodes,
        counter.calls,
        counter.compute,
        counter.launches,
        counter.operands,
        counter.created,
    )
    return cost, counter.ops


def cost_table(shape=DEFAULT_SHAPE, device="cpu") -> list[ModuleCost]:
    """The counts for BAM and FusedBAM, both variants, train mode, float32, on ``shape``."""
    from bam_fused import BAM, FusedBAM

    rows = []
    for variant in ("paper", "official"):
        for cls in (BAM, FusedBAM):
            torch.manual_seed(0)
            module = cls(shape[1], variant=variant).to(device).train()
            x = torch.randn(shape, device=device, requires_grad=True)
            rows.append(module_cost(module, x, f"{cls.__name__}({shape[1]}, variant={variant!r})")[0])
    return rows


def markdown(rows: list[ModuleCost]) -> str:
    fields = [f for f in ModuleCost.__dataclass_fields__ if f != "module"]
    head = "| one train-mode fwd+bwd | " + " | ".join(f.replace("_", " ") for f in fields) + " |"
    lines = [head, "|---|" + "---:|" * len(fields)]
    for r in rows:
        lines.append(f"| {r.module} | " + " | ".join(str(getattr(r, f)) for f in fields) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=DEFAULT_SHAPE, metavar=("N", "C", "H", "W"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--out", help="also write the rows, with the machine and versions, here as JSON")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = cost_table(tuple(args.shape), device)
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else markdown(rows))
    if args.out:
        from .results import write_table

        rows = [asdict(r) for r in rows]
        write_table(args.out, torch.device(device), rows, shape=list(args.shape), dtype="fp32", mode="train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
