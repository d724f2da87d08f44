"""Full-size passes in inductor's generated code for one train-mode BAM forward+backward, kernel
by kernel, beside eager BAM's and FusedBAM's counts.

    python -m benchmarks.inductor_passes [--shape N C H W]... [--modules paper official released]
        [--layouts nchw channels_last] [--backends cpp triton] [--layout-heuristics cpu generic]
        [--kernels] [--out FILE.json]

A full-size operand is what :mod:`benchmarks.module_cost` counts in eager code: a tensor with x's
numel read or written by one kernel or extern call, reads and writes counted separately, each
buffer once per kernel. Here a kernel is one of inductor's scheduler nodes after fusion: one
Triton kernel on the GPU backend, one loop nest on the C++ backend, which puts every loop nest
between two extern calls into one ``cpp_fused_*`` function (so a C++ function is not a pass: two
nests of one function that both read x read it twice). A node of the C++ backend's outer-loop
fusion (one outer loop over nests that stay separate inside) counts as its parts, as the Triton
backend, which has no such fusion, would emit them.

Counted at code generation, from the scheduler's own record of each fused node's loads and
stores (its dependencies, with the sizes of the buffers they name), after the code generator
has dropped the buffers that fusion made local: a record both backends keep alike (parsing the
C++ would have to split functions into nests and follow its pointer aliases), while the fusion
decisions in it are the generating backend's own. Each count is
then checked against the output code (``run_and_get_code``, forward and backward graphs): every
full-size buffer a generated function receives is read or written by one of the nodes counted
in it, and every write lands in an argument the function may write; every materialized
full-size buffer is written by exactly one counted kernel. A mismatch raises.

Backends: ``cpp`` is what inductor runs on this machine; ``triton`` generates inductor's Triton
code for the CPU tensors (``cpu_backend="triton"``) without running its kernels (the
interpreter cannot run all of them; the values do not matter for the count): the Triton
backend's own fusion and reduction decisions, though with a CPU's device properties and without
the fusions inductor reserves for CUDA devices (NOTES lists them).

Layout heuristics: ``cpu`` is inductor's own choice here (with oneDNN, every graph that has a
convolution runs its convolutions channels_last); ``generic`` compiles with oneDNN disabled,
which sends ``GraphLowering.decide_layout_opt`` down the branch a CUDA device takes (no
channels_last when every convolution has ≤ 64 input and output channels, ...).
"""

import argparse
import contextlib
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from .module_cost import DEFAULT_SHAPE, module_cost

# A larger map beside the module's default: 256 channels (bam3 of a ResNet-18/34 at 14×14) give
# the spatial branch 16 channels, so no small tensor comes near x's numel, and on a CUDA device
# inductor's layout heuristic would pick channels_last for its convolutions (see NOTES).
LARGE_SHAPE = (4, 256, 14, 14)
MODULES = ("paper", "official", "released")
LAYOUTS = ("nchw", "channels_last")
BACKENDS = ("cpp", "triton")
LAYOUT_HEURISTICS = ("cpu", "generic")


@dataclass
class Kernel:
    """One scheduler node after fusion (a loop nest / a Triton kernel) or one extern call."""

    kernel: str  # the generated function it is part of, or the extern call
    nodes: list[str]  # inductor's operation names, in the order it generated them
    kind: str  # the scheduler node class ("…/part" for a part of an outer-loop fusion)
    reads: list[str]  # full-size buffers read
    writes: list[str]  # full-size buffers written

    @property
    def passes(self) -> int:
        return len(self.reads) + len(self.writes)


@dataclass
class GraphPasses:
    """The kernels of one compiled graph (forward or backward) and their full-size buffers."""

    graph: str
    kernels: list[Kernel]
    buffers: dict[str, dict]  # name -> shape, stride, what it is (input, output, origin)
    calls_checked: int = 0  # generated-function calls checked against the output code
    # Triton kernels that load a full-size argument at other than one place (twice: a second
    # pass inside the kernel, e.g. a looped reduction's epilogue), as "function: buffer ...".
    triton_loads_not_once: list[str] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return sum(k.passes for k in self.kernels)


@dataclass
class CasePasses:
    module: str
    layout: str
    shape: list[int]
    backend: str
    layout_heuristic: str
    forward: int
    backward: int
    total: int
    eager_full_size_operands: int  # benchmarks.module_cost on the eager module, same input
    fused_full_size_operands: int  # the same for FusedBAM of the same variant
    compile_s: float
    graphs: list[GraphPasses] = field(default_factory=list)


def _buffer(name: str):
    from torch._inductor.virtualized import V

    buf = V.graph.try_get_buffer(name)
    if buf is None:
        raise RuntimeError(f"inductor names buffer {name!r} but the graph has no such buffer")
    return buf


def _is_multi_output(buf) -> bool:
    from torch._inductor import ir

    return isinstance(getattr(buf, "layout", None), ir.MultiOutputLayout)


class _Recorder:
    """Hooks on inductor's scheduler while it generates code: per graph, each fused node's
    full-size loads and stores and the generated function it went into."""

    def __init__(self, full: int):
        self.full = full
        # Keyed by inductor's graph object itself (held, so that no later graph reuses its id).
        self.graphs: dict[object, GraphPasses] = {}
        self.defined: dict[object, list[tuple[str, list[str]]]] = {}  # per graph: (function, nodes)
        self.numels: dict[object, dict[str, int]] = {}  # per graph: every buffer's and input's numel

    def _numel(self, name: str) -> int | None:
        buf = _buffer(name)
        return None if _is_multi_output(buf) else int(buf.get_numel())

    def _describe(self, name: str) -> dict:
        from torch._inductor.virtualized import V

        buf = _buffer(name)
        origin = getattr(buf, "origin_node", None)
        if name in V.graph.graph_inputs:
            what = "input"
        elif origin is None:
            what = ",".join(sorted(o.name for o in getattr(buf, "origins", None) or ()))
        elif origin.op == "placeholder":  # a graph input in another layout
            what = f"copy of {origin.name}"
        else:
            what = f"{origin.name} ({origin.target})"
        shape = [int(s) for s in buf.get_size()]
        if shape and len(shape) != 4:
            raise ValueError(f"buffer {name} has x's numel but shape {shape}: choose another --shape")
        return {
            "shape": shape,
            "stride": [int(s) for s in buf.get_stride()],
            "what": what,
            "graph_output": name in V.graph.get_output_names(),
        }

    def _writes(self, scheduler, snode) -> set[str]:
        """Buffers a node stores, a multi-output extern's tuple replaced by its outputs."""
        from torch._inductor import ir

        names = set()
        for dep in snode.read_writes.writes:
            if _is_multi_output(_buffer(dep.name)):
                for user in scheduler.name_to_buf[dep.name].users:
                    node = getattr(user.node, "node", None)
                    if isinstance(node, ir.MultiOutput):
                        names |= {o.get_name() for o in user.node.get_outputs()}
            else:
                names.add(dep.name)
        return names

    def _kernel(self, scheduler, node, kind: str, function: str, removed: set[str]) -> Kernel:
        from torch._inductor.dependencies import WeakDep

        snodes = node.get_nodes()
        writes = set().union(*(self._writes(scheduler, s) for s in snodes))
        reads = {
            d.name for s in snodes for d in s.read_writes.reads if not isinstance(d, WeakDep)
        } - writes  # a buffer stored and loaded in one kernel is read from registers
        full = lambda names: sorted(n for n in names if self._numel(n) == self.full)
        return Kernel(function, [s.get_name() for s in snodes], kind, full(reads), full(writes - removed))

    def _record(self, scheduler, nodes) -> None:
        from torch._inductor import ir
        from torch._inductor.codegen.cpp import OuterLoopFusedSchedulerNode
        from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode
        from torch._inductor.virtualized import V

        graph = self.graphs.setdefault(V.graph, GraphPasses("backward" if V.graph.is_backward else "forward", [], {}))
        removed = set(V.graph.removed_buffers) | set(V.graph.inplaced_to_remove)
        numels = {name: self._numel(name) for name in (*V.graph.name_to_buffer, *V.graph.graph_inputs)}
        numels.update((name, t.numel()) for name, t in V.graph.constants.items())
        self.numels[V.graph] = numels
        function_of = {n: f for f, names in self.defined.get(V.graph, []) for n in names}
        for node in nodes:
            if isinstance(node, NopKernelSchedulerNode):
                continue
            if isinstance(node, ExternKernelSchedulerNode):
                if isinstance(node.node, ir.MultiOutput):  # `buf = tuple[i]`: no traffic
                    continue
                call = getattr(node.node, "python_kernel_name", None) or type(node.node).__name__
                graph.kernels.append(self._kernel(scheduler, node, type(node).__name__, call, removed))
                continue
            parts = node.get_outer_nodes() if isinstance(node, OuterLoopFusedSchedulerNode) else [node]
            kind = type(node).__name__ + ("/part" if len(parts) > 1 else "")
            for part in parts:
                functions = {function_of.get(s.get_name()) for s in part.get_nodes()}
                if len(functions) != 1 or None in functions:
                    raise RuntimeError(f"node {part.get_name()} went into functions {functions}")
                graph.kernels.append(self._kernel(scheduler, part, kind, functions.pop(), removed))
        for k in graph.kernels:
            for name in k.reads + k.writes:
                if name not in graph.buffers:
                    graph.buffers[name] = self._describe(name)

    @contextlib.contextmanager
    def hooks(self):
        from torch._inductor import scheduler as sched
        from torch._inductor.codegen.cpp import CppScheduling
        from torch._inductor.codegen.triton import TritonScheduling
        from torch._inductor.virtualized import V

        recorder = self
        codegen = sched.Scheduler._codegen

        def recorded_codegen(self, nodes):
            nodes = list(nodes)
            codegen(self, nodes)
            recorder._record(self, nodes)

        def recorded(define):
            def define_kernel(self, src_code, nodes, *args, **kwargs):
                name = define(self, src_code, nodes, *args, **kwargs)
                names = [n.get_name() for n in nodes if isinstance(n, sched.BaseSchedulerNode)]
                recorder.defined.setdefault(V.graph, []).append((name, names))
                return name

            return define_kernel

        originals = {cls: cls.define_kernel for cls in (CppScheduling, TritonScheduling)}
        sched.Scheduler._codegen = recorded_codegen
        for cls, define in originals.items():
            cls.define_kernel = recorded(define)
        try:
            yield self
        finally:
            sched.Scheduler._codegen = codegen
            for cls, define in originals.items():
                cls.define_kernel = define


# The output code: generated functions, their parameters, their calls, and buffer reuse.
_CPP_DEF = re.compile(r"^(\w+) = async_compile\.cpp_pybinding\(.*?extern \"C\"[^(]*\((.*?)\)", re.M | re.S)
_TRITON_DEF = re.compile(r"^(\w+) = async_compile\.triton\('\w+', '''(.*?^def \w+\((.*?)\):.*?)'''", re.M | re.S)
_REUSE = re.compile(r"^\s*(\w+) = (?:reinterpret_tensor\()?(\w+)\b.*; del \2\s+# reuse$", re.M)


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([" and 1 or ch in ")]" and -1 or 0
        if ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return [a for a in args if a]


def _roles(params: str) -> list[tuple[str, str]]:
    """(name, 'r', 'w' or 'rw') per parameter of a generated function: inductor names its
    pointers in_ptr*, out_ptr*, in_out_ptr*; the others (sizes, block sizes) get ''."""
    roles = []
    for param in _split_args(params):
        name = re.split(r"[\s*:]+", param.split(":")[0].strip())[-1]
        role = "rw" if name.startswith("in_out_ptr") else "r" if name.startswith("in_ptr") else ""
        roles.append((name, role or ("w" if name.startswith("out_ptr") else "")))
    return roles


def check_against_code(
    graph: GraphPasses, code: str, defined: list[tuple[str, list[str]]], numels: dict[str, int], full: int
) -> None:
    """Raise unless each call of a generated function in ``code`` passes exactly the full-size
    buffers that the kernels counted in it read or write, and those writes go to arguments the
    function may write. ``defined`` is the recorder's (function, nodes) in generation order,
    which is the order of the calls; ``numels`` every buffer's and graph input's numel."""
    roles = {name: _roles(params) for name, params in _CPP_DEF.findall(code)}
    triton_source = {}
    for name, source, params in _TRITON_DEF.findall(code):
        roles[name], triton_source[name] = _roles(params), source
    alias = dict(_REUSE.findall(code))

    def storage(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    call = re.compile(r"^\s*(" + "|".join(map(re.escape, roles)) + r")(?:\.run)?\((.*)\)\s*$", re.M) if roles else None
    calls = call.findall(code) if call else []
    if [f for f, _ in calls] != [f for f, _ in defined]:
        raise RuntimeError(
            f"{graph.graph}: calls {[f for f, _ in calls]} differ from generated {[f for f, _ in defined]}"
        )
    by_node = {n: k for k in graph.kernels for n in k.nodes}
    for (function, args), (_, nodes) in zip(calls, defined):
        args = [a for a in _split_args(args) if not a.startswith("stream=")]
        passed, writable = set(), set()
        for arg, (param, role) in zip(args, roles[function]):
            base = re.match(r"(?:reinterpret_tensor\()?(\w+)", arg).group(1)
            if role and base not in numels:
                raise RuntimeError(f"{graph.graph}: {function} is passed {arg}, which is no buffer of the graph")
            if role and numels[base] == full:
                passed.add(storage(base))
                if "w" in role:
                    writable.add(storage(base))
                loads = len(re.findall(rf"tl\.load\({param} \+", triton_source.get(function, "")))
                if "r" in role and function in triton_source and loads != 1:
                    graph.triton_loads_not_once.append(f"{function}: {base} loaded at {loads} places")
        kernels = {id(by_node[n]): by_node[n] for n in nodes if n in by_node}.values()
        counted = {storage(n) for k in kernels for n in k.reads + k.writes}
        written = {storage(n) for k in kernels for n in k.writes}
        if counted != passed or not written <= writable:
            raise RuntimeError(
                f"{graph.graph}: {function}({', '.join(args)}) passes full-size {sorted(passed)} "
                f"(writable {sorted(writable)}); its kernels read or write {sorted(counted)}, write {sorted(written)}"
            )
        graph.calls_checked += 1


def _check_writes(graph: GraphPasses) -> None:
    """Every full-size buffer that is not a graph input is written by exactly one kernel."""
    writers = {}
    for k in graph.kernels:
        for name in k.writes:
            writers.setdefault(name, []).append(k.kernel)
    for name, info in graph.buffers.items():
        if info["what"] != "input" and len(writers.get(name, [])) != 1:
            raise RuntimeError(f"{graph.graph}: full-size {name} written by {writers.get(name, [])}")


def make_module(module: str, channels: int) -> torch.nn.Module:
    """``paper``/``official``: eager ``bam_fused.BAM(variant=…)``; ``released``: the authors' code."""
    from bam_fused import BAM

    from .released_bam import BAM as ReleasedBAM

    if module == "released":
        return ReleasedBAM(channels)
    return BAM(channels, variant=module)


def make_input(shape, layout: str) -> torch.Tensor:
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def inductor_passes(
    module: torch.nn.Module, x: torch.Tensor, backend: str = "cpp", layout_heuristic: str = "cpu"
) -> tuple[list[GraphPasses], list[str]]:
    """Compile ``module`` (train mode, fullgraph, static shapes, no caches) and count one
    forward+backward on ``x`` (N, C, H, W; requires grad), with g of x's layout. Returns the
    forward and backward graphs' kernels and the output code of each."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    g = torch.randn_like(x)
    recorder = _Recorder(x.numel())
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    options = {"force_disable_caches": True, "cpu_backend": backend}
    with (
        recorder.hooks(),
        torch._inductor.config.patch(options),
        _kernels_not_run(backend == "triton"),
        torch.backends.mkldnn.flags(enabled=layout_heuristic == "cpu"),
    ):
        _, codes = run_and_get_code(lambda: compiled(x).backward(g))
    graphs = list(recorder.graphs.values())
    if [gr.graph for gr in graphs] != ["forward", "backward"] or len(codes) != 2:
        raise RuntimeError(
            f"expected one forward and one backward graph, got {[gr.graph for gr in graphs]} and {len(codes)} codes"
        )
    for graph, code, key in zip(graphs, codes, recorder.graphs):
        check_against_code(graph, code, recorder.defined.get(key, []), recorder.numels[key], x.numel())
        _check_writes(graph)
    return graphs, codes


@contextlib.contextmanager
def _kernels_not_run(skip: bool):
    """Triton kernels made for CPU tensors run through the interpreter, which cannot run some
    of inductor's; the count needs only the generated code, so they return without running."""
    if not skip:
        yield
        return
    import torch.utils._triton as triton_utils
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    run, backend_hash = CachingAutotuner.run, triton_utils.triton_hash_with_backend
    CachingAutotuner.run = lambda self, *args, **kwargs: None
    # Inductor hashes the active Triton driver's target into each kernel; there is none on CPU.
    triton_utils.triton_hash_with_backend = lambda: "cpu-interpreter"
    try:
        yield
    finally:
        CachingAutotuner.run, triton_utils.triton_hash_with_backend = run, backend_hash


def eager_counts(module: str, layout: str, shape) -> tuple[int, int]:
    """Full-size operands of the eager module and of FusedBAM of the same variant (the released
    code's is "official") for one train-mode forward+backward (benchmarks.module_cost)."""
    from bam_fused import FusedBAM

    counts = []
    for make in (lambda: make_module(module, shape[1]), lambda: FusedBAM(shape[1], variant=_variant(module))):
        torch.manual_seed(0)
        counts.append(module_cost(make().train(), make_input(shape, layout))[0].full_size_operands)
    return counts[0], counts[1]


def _variant(module: str) -> str:
    return "official" if module == "released" else module


def count_case(
    module: str, layout: str, shape, backend: str = "cpp", layout_heuristic: str = "cpu", eager=None
) -> CasePasses:
    """One row: inductor's passes for ``module`` (one of MODULES) on a ``layout`` input of
    ``shape``, beside ``eager`` = :func:`eager_counts` (computed when not given)."""
    torch.manual_seed(0)
    x = make_input(shape, layout)
    start = time.perf_counter()
    graphs, _ = inductor_passes(make_module(module, shape[1]).train(), x, backend, layout_heuristic)
    compile_s = time.perf_counter() - start
    eager_operands, fused_operands = eager or eager_counts(module, layout, shape)
    forward, backward = (g.passes for g in graphs)
    return CasePasses(
        module,
        layout,
        list(shape),
        backend,
        layout_heuristic,
        forward,
        backward,
        forward + backward,
        eager_operands,
        fused_operands,
        round(compile_s, 1),
        graphs,
    )


def markdown(rows: list[CasePasses]) -> str:
    lines = [
        "| module | layout | shape | backend | layout heuristic | inductor forward | inductor backward "
        "| inductor total | eager | FusedBAM |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.module} | {r.layout} | {'×'.join(map(str, r.shape))} | {r.backend} | {r.layout_heuristic} | "
            f"{r.forward} | {r.backward} | {r.total} | {r.eager_full_size_operands} | {r.fused_full_size_operands} |"
        )
    return "\n".join(lines)


def kernel_listing(row: CasePasses) -> str:
    """Each kernel that reads or writes a full-size buffer, with those buffers."""
    shape = "×".join(map(str, row.shape))
    lines = [f"{row.module} {row.layout} {shape} ({row.backend}, {row.layout_heuristic} layout heuristic):"]
    for graph in row.graphs:
        lines.append(f"  {graph.graph}: {graph.passes} passes")
        for k in graph.kernels:
            if k.passes:
                lines.append(
                    f"    {k.passes}  {k.kernel} [{' '.join(k.nodes)}] reads {', '.join(k.reads) or '-'}; "
                    f"writes {', '.join(k.writes) or '-'}"
                )
        for name, info in graph.buffers.items():
            lines.append(f"      {name}: {info['what']}, shape {info['shape']}, stride {info['stride']}")
        lines += [f"    loaded other than once: {entry}" for entry in graph.triton_loads_not_once]
    return "\n".join(lines)


def as_json(row: CasePasses) -> dict:
    """The row with its graphs' passes and, of their kernels, those that touch a full-size buffer."""
    record = asdict(row)
    for graph, out in zip(row.graphs, record["graphs"]):
        out["passes"] = graph.passes
        out["kernels_total"] = len(graph.kernels)
        out["kernels"] = [{**kout, "passes": k.passes} for k, kout in zip(graph.kernels, out["kernels"]) if k.passes]
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        type=int,
        nargs=4,
        action="append",
        metavar=("N", "C", "H", "W"),
        help=f"repeatable (default {DEFAULT_SHAPE} and {LARGE_SHAPE})",
    )
    parser.add_argument("--modules", nargs="+", choices=MODULES, default=list(MODULES))
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["cpp"], help="inductor's cpu_backend")
    parser.add_argument("--layout-heuristics", nargs="+", choices=LAYOUT_HEURISTICS, default=["cpu"])
    parser.add_argument("--kernels", action="store_true", help="also list each case's kernels")
    parser.add_argument("--out", help="also write the rows, kernels and all, with the machine and versions, here")
    args = parser.parse_args(argv)
    rows = []
    for shape in map(tuple, args.shape or (DEFAULT_SHAPE, LARGE_SHAPE)):
        for module in args.modules:
            for layout in args.layouts:
                eager = eager_counts(module, layout, shape)
                for backend in args.backends:
                    for heuristic in args.layout_heuristics:
                        rows.append(count_case(module, layout, shape, backend, heuristic, eager))
                        if args.kernels:
                            print(kernel_listing(rows[-1]), flush=True)
    print(markdown(rows))
    if args.out:
        from .results import write_table

        write_table(args.out, torch.device("cpu"), [as_json(r) for r in rows], dtype="fp32", mode="train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
