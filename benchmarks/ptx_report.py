"""Compile the kernels ahead of time for GPU targets, without a GPU, and report on them.

    python -m benchmarks.ptx_report --arch sm_90 --dtype bf16 [--channels-last] [--ptx DIR] [--json]
                                    [--bwd-stages N]
    python -m benchmarks.ptx_report --survey OUT.json [--check] [--archs 75,80,...] [--dtypes fp16,...]
                                    [--shapes 64x256x56x56,...] [--workers N]

The first form compiles every kernel as its launcher launches it on bam1's map in a ResNet-50
(each combine mode of the gate, channel-only and spatial-only, a FusedBAM training step in both
variants) for one arch, and prints whether the global loads and stores are 128-bit (the
reductions' need not be: they move a few % of the bytes), the registers, spills and shared
memory, and writes the PTX to DIR.

The survey compiles every launch of the gate and of a FusedBAM training step over shapes ×
dtypes × layouts × variants × archs (default: :data:`SURVEY_SHAPES`, every dtype and layout,
both variants, every arch of :data:`bam_fused.kernels.target.SHARED_BYTES`), each launch
planned for its arch as on that GPU; a launch Triton specialises alike is compiled once. It
writes a table (:func:`bounds_table`): each compiled launch with its registers, spill bytes,
shared bytes and the arch's limit, and where it is launched; each configuration the fused path
routes to the per-op path (the kernels' ``*_fits`` functions), with the reason, its kernels not
compiled; and the launches that spill or pass their arch's shared memory (``--check``: exit 1
when there is one). ``benchmarks/results/ptx-bounds.json`` holds the default survey.

Specialisation follows a real launch: pointers and sizes divisible by 16 are marked so, strides
equal to 1 become constants — without that nothing vectorises. Runs with TRITON_INTERPRET unset
(the interpreter has no compiler).
"""

import argparse
import contextlib
import functools
import io
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from bam_fused.common import (
    CIFAR_BAM_SHAPES,
    DTYPES,
    GATE_MODES,
    LAYOUTS,
    RESNET50_BAM_SHAPES,
    VARIANTS,
    interpreter_requested,
)
from bam_fused.kernels.layout import captured_launches
from bam_fused.kernels.target import SHARED_BYTES, arch_target, planned_for

# bam1's map in a ResNet-50: every size is a multiple of 16.
BAM1 = RESNET50_BAM_SHAPES[0]
# The survey's shapes: a ResNet-50's BAM maps (a ResNet-101's are the same), a CIFAR ResNet's, and
# the shapes the module's tests run (ragged, tiny, h below 16).
TEST_BAM_SHAPES = ((3, 24, 5, 7), (4, 32, 6, 9), (8, 32, 8, 8), (2, 64, 8, 8))
SURVEY_SHAPES = RESNET50_BAM_SHAPES + CIFAR_BAM_SHAPES + TEST_BAM_SHAPES
# The reduction ratio of the tests' shapes (4: h of 6 to 16) and of the networks' (16).
TEST_REDUCTION = 4
NETWORK_REDUCTION = 16

_WIDE_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z0-9_]+)*\.(v4\.(?:b32|f32|u32)|v2\.(?:b64|f64|u64))\b")
_ANY_ACCESS = re.compile(r"\b(ld|st)\.global\b")
_ASYNC_COPY_128 = re.compile(r"\bcp\.async\.c[ag]\.shared\.global(?:\.\w+)*\s*\[[^]]+\],\s*\[[^]]+\],\s*(?:16|0x10)\b")


@dataclass
class KernelReport:
    kernel: str
    mode: str
    dtype: str
    layout: str
    block: str
    loads_128: int
    loads_total: int
    stores_128: int
    stores_total: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    async_copies_128: int  # 16-byte cp.async: loads the pipeliner routes through shared memory
    stores_bulk: bool = True  # writes a tensor of x's size (the module's stage one writes only partials)

    @property
    def wide(self) -> bool:
        """All bulk traffic 128-bit: at least one 128-bit load (or 16-byte cp.async), and a 128-bit
        store where the kernel writes a tensor of x's size."""
        return (self.loads_128 > 0 or self.async_copies_128 > 0) and (self.stores_128 > 0 or not self.stores_bulk)


# Triton's names for the pointer types of a signature.
_POINTER_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int64": "i64"}


def _specialise(fn, args: tuple, kwargs: dict):
    """Signature, constants and attributes as a real launch would give for these arguments:
    tensors are pointers (16-byte aligned, as PyTorch allocates), annotated scalars take their
    annotation, other floats are fp32, integers equal to 1 become constants and multiples of 16
    are marked so, as Triton's launcher does."""
    from triton.backends.compiler import BaseBackend

    values = dict(zip(fn.arg_names, args)) | {k: v for k, v in kwargs.items() if k in fn.arg_names}
    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = values[name]
        if i in fn.constexprs:
            signature[name] = "constexpr"
            consts[name] = value
        elif hasattr(value, "data_ptr"):
            signature[name] = "*" + _POINTER_TYPES[str(value.dtype).removeprefix("torch.")]
            attrs[(i,)] = BaseBackend.parse_attr("D")
        elif fn.params[i].annotation_type:  # a typed scalar (the BatchNorms' float64 eps and momentum)
            signature[name] = fn.params[i].annotation_type
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"
            consts[name] = 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = BaseBackend.parse_attr("D")
    return signature, consts, attrs


def _options(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}


def specialisation_key(fn, args: tuple, kwargs: dict, arch: int) -> tuple:
    """What Triton compiles a launch of ``fn`` for ``arch`` from: two launches with the same key
    share one binary."""
    signature, consts, attrs = _specialise(fn, args, kwargs)
    return (
        fn.__name__,
        tuple(signature.items()),
        tuple((k, str(v)) for k, v in consts.items()),
        tuple(sorted((k, str(v)) for k, v in attrs.items())),
        tuple(sorted(_options(kwargs).items())),
        arch,
    )


def _block_label(kwargs: dict) -> str:
    """A launch's block constexprs in the kernel's order, and its warps."""
    return "x".join(str(v) for k, v in kwargs.items() if k.startswith("BLOCK")) + f"/w{kwargs['num_warps']}"


def _ptxas(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) of ``ptx`` assembled for ``arch`` by the ptxas Triton uses."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptx = re.sub(r"\.target sm_\d+a?", f".target {sm_arch_from_capability(arch)}", ptx, count=1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"],
            capture_output=True,
            text=True,
            check=True,
        )
    return _ptxas_log(proc.stdout + proc.stderr)


def _ptxas_log(log: str) -> tuple[int, int] | None:
    """(registers, spill bytes) from ptxas -v's log; None where it has none (a cached compile)."""
    regs = re.search(r"Used (\d+) registers", log)
    if regs is None:
        return None
    return int(regs.group(1)), sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))


def _count(ptx: str, kind: str) -> tuple[int, int]:
    wide = sum(1 for m in _WIDE_ACCESS.finditer(ptx) if m.group(1) == kind)
    total = sum(1 for m in _ANY_ACCESS.finditer(ptx) if m.group(1) == kind)
    return wide, total


def compile_launch(fn, args: tuple, kwargs: dict, arch: int) -> dict:
    """A captured launch compiled for ``arch``: its PTX, registers, spill and shared bytes, and its
    global accesses (128-bit ones, all; 16-byte cp.async)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, consts, attrs = _specialise(fn, args, kwargs)
    src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
    # Triton's own ptxas run reports registers and spills (printed when asked): no second run.
    log = io.StringIO()
    with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=_options(kwargs))
    ptx = compiled.asm["ptx"]
    registers, spill_bytes = _ptxas_log(log.getvalue()) or _ptxas(ptx, arch)
    return _resources(ptx, registers, spill_bytes, compiled.metadata.shared)


def _resources(ptx: str, registers: int, spill_bytes: int, shared_bytes: int) -> dict:
    loads_128, loads = _count(ptx, "ld")
    stores_128, stores = _count(ptx, "st")
    return {
        "ptx": ptx,
        "loads_128": loads_128,
        "loads_total": loads,
        "stores_128": stores_128,
        "stores_total": stores,
        "registers": registers,
        "spill_bytes": spill_bytes,
        "shared_bytes": shared_bytes,
        "async_copies_128": len(_ASYNC_COPY_128.findall(ptx)),
    }


def _meta_x(shape: tuple, dtype: torch.dtype, channels_last: bool, requires_grad: bool = False) -> torch.Tensor:
    x = torch.empty(shape, device="meta", dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def gate_launches(shape: tuple, dtype: torch.dtype, channels_last: bool, bwd_stages: int | None = None) -> list:
    """(mode, kernel, args, kwargs) of the gate's launches on x of ``shape``, per mode: forward, the
    backward's two stages (the reduction once: it does not depend on the mode); and stage one once
    more for an expanded g. Planned for the target :func:`~bam_fused.kernels.target.planned_for`
    names; ``bwd_stages`` overrides the backward's num_stages."""
    from bam_fused.kernels.gate_bwd import bwd_config, gate_bwd
    from bam_fused.kernels.gate_fwd import gate_fwd
    from bam_fused.kernels.target import target_of

    N, C, H, W = shape
    x = _meta_x(shape, dtype, channels_last)
    config = None
    if bwd_stages is not None:
        config = bwd_config(N, C, H * W, channels_last, dtype.itemsize, target_of(x.device).sms)
        config = config._replace(num_stages=bwd_stages)
    jobs = []
    for mode, (combine, has_mc, has_ms) in GATE_MODES.items():
        mc = torch.empty(N, C, device="meta", dtype=dtype) if has_mc else None
        ms = torch.empty(N, H, W, device="meta", dtype=dtype) if has_ms else None
        with captured_launches() as launches:
            gate_fwd(x, mc, ms, combine=combine, residual=True)
            gate_bwd(torch.empty_like(x), x, mc, ms, combine=combine, residual=True, config=config)
        jobs += [(mode, *launch) for launch in launches if mode == "sum" or "reduce" not in launch[0].__name__]
    # The gradient of y.sum(): g expanded from one value (stride 0), read as it is.
    with captured_launches() as launches:
        g = torch.empty(1, device="meta", dtype=dtype).expand(x.shape)
        gate_bwd(g, x, mc, ms, combine="sum", residual=True, config=config)
    return jobs + [("sum, g expanded", *launches[0])]


# The module's own kernels (the gate's forward and its stage two are the gate's launches).
MODULE_KERNELS = ("pool_reduce", "channel_mlp", "input_grad", "gate_bwd_kernel")


def module_launches(shape: tuple, dtype: torch.dtype, channels_last: bool, variant: str, reduction: int) -> list | str:
    """(variant, kernel, args, kwargs) of the module's own launches in one FusedBAM training step
    on x of ``shape`` (train mode; backward with a dense and with an expanded gradient, as the
    kernels' pre-flight check runs it), planned for the target
    :func:`~bam_fused.kernels.target.planned_for` names; or why the call takes the per-op path."""
    from bam_fused import FusedBAM
    from bam_fused.fused_bam import step_on_meta
    from bam_fused.fused_path import plan_fused_call

    module = FusedBAM(shape[1], reduction, variant=variant).to(device="meta", dtype=dtype)
    x = _meta_x(shape, dtype, channels_last)
    call = plan_fused_call(module, x)
    if isinstance(call, str):
        return call
    with captured_launches() as launches:
        step_on_meta(x, call)
    return [(variant, *launch) for launch in launches if launch[0].__name__.startswith(MODULE_KERNELS)]


def compile_kernels(
    arch: int,
    dtype: str,
    channels_last: bool,
    ptx_dir: str | None = None,
    bwd_stages: int | None = None,
    shape: tuple = BAM1,
) -> list[KernelReport]:
    """Compile the gate's kernels in every mode and the fused module's in both variants, as their
    launchers launch them on x of ``shape`` planned for ``arch`` (e.g. 90), and report on each;
    ``bwd_stages`` overrides the gate backward's num_stages (its walk prefetched through
    cp.async)."""
    torch_dtype = DTYPES[dtype]
    layout = "channels_last" if channels_last else "nchw"
    with planned_for(arch_target(arch)):
        jobs = gate_launches(shape, torch_dtype, channels_last, bwd_stages)
        for variant in VARIANTS:
            module_jobs = module_launches(shape, torch_dtype, channels_last, variant, NETWORK_REDUCTION)
            if isinstance(module_jobs, str):
                raise ValueError(f"{variant} at {shape} {dtype} takes the per-op path: {module_jobs}")
            jobs += _first_of_each(module_jobs)
    reports = []
    for mode, fn, args, kwargs in jobs:
        name = fn.__name__
        stores_bulk = kwargs.get("STORE_GX", True)
        if not stores_bulk:
            mode = f"{mode}, no gx"
        out = compile_launch(fn, args, kwargs, arch)
        ptx = out.pop("ptx")
        if ptx_dir:
            os.makedirs(ptx_dir, exist_ok=True)
            label = mode.replace(" ", "").replace("(", "-").replace(")", "")
            with open(os.path.join(ptx_dir, f"{name}-{label}-{dtype}-{layout}-sm_{arch}.ptx"), "w") as f:
                f.write(ptx)
        reports.append(KernelReport(name, mode, dtype, layout, _block_label(kwargs), **out, stores_bulk=stores_bulk))
    return reports


def _first_of_each(jobs: list) -> list:
    """One launch per kernel (the backward with an expanded gradient repeats the dense one's
    kernels, stage one with other strides)."""
    seen, out = set(), []
    for job in jobs:
        if job[1].__name__ not in seen:
            seen.add(job[1].__name__)
            out.append(job)
    return out


def _reduction(shape: tuple) -> int:
    return TEST_REDUCTION if shape in TEST_BAM_SHAPES else NETWORK_REDUCTION


def survey(
    archs=tuple(SHARED_BYTES),
    shapes=SURVEY_SHAPES,
    dtypes=tuple(DTYPES),
    layouts=tuple(LAYOUTS),
    variants=VARIANTS,
    gate_modes=tuple(GATE_MODES),
    workers: int = 1,
) -> list[dict]:
    """Every launch of the gate (in ``gate_modes``, and stage one for an expanded g) and of a
    FusedBAM training step, for each arch × shape × dtype × layout × variant, planned for its arch
    as on that GPU and compiled for it (launches Triton specialises alike compiled once; the archs
    spread over ``workers`` processes): a record per launch with its block, registers, spill
    bytes, shared bytes and the arch's ``shared_limit``; a record with ``routed`` (the reason) per
    configuration the fused path sends the per-op way, whose kernels are not compiled. (sm_86 and
    sm_89 are compiled, not assembled from sm_80's PTX: Triton 3.6's differs for some launches.)"""
    one_arch = functools.partial(
        _survey_arch,
        shapes=tuple(shapes),
        dtypes=tuple(dtypes),
        layouts=tuple(layouts),
        variants=tuple(variants),
        gate_modes=tuple(gate_modes),
    )
    if workers > 1 and len(archs) > 1:
        # Forked: the parent's kernels and Triton set-up are the children's.
        with multiprocessing.get_context("fork").Pool(min(workers, len(archs))) as pool:
            per_arch = pool.map(one_arch, archs, chunksize=1)
    else:
        per_arch = list(map(one_arch, archs))
    return [record for records in per_arch for record in records]


def _survey_arch(arch: int, shapes, dtypes, layouts, variants, gate_modes) -> list[dict]:
    """:func:`survey`'s records for one arch."""
    records, jobs = [], {}  # jobs: specialisation key → (kernel, args, kwargs)
    with planned_for(arch_target(arch)):
        for shape, dtype, layout in itertools.product(shapes, dtypes, layouts):
            where = {"arch": arch, "shape": list(shape), "dtype": dtype, "layout": layout}
            channels_last = layout == "channels_last"
            launches = []
            if gate_modes:
                launches += [j for j in gate_launches(shape, DTYPES[dtype], channels_last) if j[0] in gate_modes]
            for variant in variants:
                got = module_launches(shape, DTYPES[dtype], channels_last, variant, _reduction(shape))
                if isinstance(got, str):
                    records.append(where | {"mode": variant, "routed": got})
                else:
                    launches += got
            for mode, fn, args, kwargs in launches:
                key = specialisation_key(fn, args, kwargs, arch)
                jobs.setdefault(key, (fn, args, kwargs))
                record = where | {"kernel": fn.__name__, "mode": mode, "block": _block_label(kwargs)}
                records.append(record | {"stores_bulk": kwargs.get("STORE_GX", True), "key": key})
    compiled = {}
    for key, (fn, args, kwargs) in jobs.items():
        compiled[key] = compile_launch(fn, args, kwargs, arch)
    for record in records:
        if "key" in record:
            key = record.pop("key")
            threads = 32 * dict(key[4])["num_warps"]
            resources = {k: v for k, v in compiled[key].items() if k != "ptx"}
            record |= resources | {"shared_limit": SHARED_BYTES[arch], "threads": threads}
    return records


def out_of_bounds(records: list[dict]) -> list[dict]:
    """The launched records (not routed) that spill registers or ask for more shared memory than
    their arch has."""
    return [r for r in records if "routed" not in r and (r["spill_bytes"] > 0 or r["shared_bytes"] > r["shared_limit"])]


# What a survey's table keeps of a launch (the rest is where it was launched).
_COMPILED = ("arch", "kernel", "dtype", "block", "threads", "registers", "spill_bytes", "shared_bytes", "shared_limit")


def bounds_table(records: list[dict]) -> dict:
    """A survey's records as a table: the launches grouped by what was compiled and what it uses
    (each with the shape/layout/mode where it is launched), the configurations routed to the
    per-op path with their reasons, and those out of bounds."""
    groups: dict = {}
    for r in records:
        if "routed" not in r:
            row = groups.setdefault(tuple(r[k] for k in _COMPILED), [])
            row.append(f"{'x'.join(map(str, r['shape']))} {r['layout']} {r['mode']}")
    return {
        "out_of_bounds": out_of_bounds(records),
        "routed": [r for r in records if "routed" in r],
        "launches": [dict(zip(_COMPILED, k)) | {"where": where} for k, where in sorted(groups.items())],
    }


def _shape(text: str) -> tuple:
    return tuple(int(v) for v in text.split("x"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="sm_80, sm_90, … (default sm_90)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--ptx", metavar="DIR", help="write each kernel's PTX here")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--bwd-stages", type=int, help="the backward's num_stages (default: the heuristic's)")
    parser.add_argument("--survey", metavar="OUT", help="compile the survey and write its table here (JSON)")
    parser.add_argument("--check", action="store_true", help="with --survey: exit 1 when a launch is out of bounds")
    parser.add_argument("--archs", default=",".join(map(str, SHARED_BYTES)), help="the survey's archs")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="the survey's dtypes")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SURVEY_SHAPES))
    parser.add_argument("--modes", default=",".join(GATE_MODES), help="the gate's modes ('' for none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="the module's variants ('' for none)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="compiling processes")
    args = parser.parse_args(argv)
    if interpreter_requested():
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    if args.survey:
        started = time.time()
        records = survey(
            archs=[int(a.removeprefix("sm_")) for a in args.archs.split(",")],
            shapes=[_shape(s) for s in args.shapes.split(",")],
            dtypes=args.dtypes.split(","),
            variants=[v for v in args.variants.split(",") if v],
            gate_modes=[m for m in args.modes.split(",") if m],
            workers=args.workers,
        )
        import triton

        with open(args.survey, "w") as f:
            json.dump(
                {
                    "command": "python -m benchmarks.ptx_report " + " ".join(argv or sys.argv[1:]),
                    "triton": triton.__version__,
                    "seconds": round(time.time() - started),
                    **bounds_table(records),
                },
                f,
                indent=0,
            )
        bad = out_of_bounds(records)
        for r in bad:
            print(f"out of bounds: {r}", file=sys.stderr)
        routed = sum("routed" in r for r in records)
        print(f"{len(records) - routed} launches, {len(bad)} out of bounds; {routed} configurations routed")
        return 1 if args.check and bad else 0
    arch = int(args.arch.removeprefix("sm_"))
    reports = compile_kernels(arch, args.dtype, args.channels_last, args.ptx, args.bwd_stages)
    if args.json:
        print(json.dumps([asdict(r) | {"wide": r.wide} for r in reports], indent=1))
        return 0
    print(
        f"{'kernel':<24} {'mode':<15} {'dtype':<5} {'layout':<13} {'block':<14} "
        f"{'ld128/ld':>8} {'st128/st':>8} {'cp.async':>8} {'regs':>5} {'spill':>5} {'smem':>6}  128-bit"
    )
    for r in reports:
        print(
            f"{r.kernel:<24} {r.mode:<15} {r.dtype:<5} {r.layout:<13} {r.block:<14} "
            f"{r.loads_128:>3}/{r.loads_total:<4} {r.stores_128:>3}/{r.stores_total:<4} {r.async_copies_128:>8} "
            f"{r.registers:>5} "
            f"{r.spill_bytes:>5} {r.shared_bytes:>6}  {'yes' if r.wide else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
