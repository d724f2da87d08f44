"""Compile the gate kernels ahead of time for a GPU target, without a GPU, and report on them.

    python -m bam_fused.kernels.ptx_report --arch sm_90 --dtype bf16 [--channels-last] [--ptx DIR] [--json]
                                           [--bwd-stages N]

For every kernel at representative specialisations (each combine mode, channel-only and
spatial-only, the block shapes the launch heuristics pick for a ResNet-50 BAM map; the
backward's reduction once), it prints whether the global loads and stores are 128-bit (the
reduction's need not be: it moves a few % of the bytes), the registers, spills and shared
memory, and writes the PTX to DIR. Specialisation follows a real launch: pointers and sizes
divisible by 16 are marked so, strides equal to 1 become constants — without that nothing
vectorises. Runs with TRITON_INTERPRET unset (the interpreter has no compiler).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from ..common import DTYPES, GATE_MODES, RESNET50_BAM_SHAPES, interpreter_requested

# bam1's map in a ResNet-50: every size is a multiple of 16.
N, C, H, W = RESNET50_BAM_SHAPES[0]
# The H100/H200's SM count, for the backward's split.
NUM_SMS = 132

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

    @property
    def wide(self) -> bool:
        """All bulk traffic 128-bit: at least one 128-bit load (or 16-byte cp.async) and store."""
        return (self.loads_128 > 0 or self.async_copies_128 > 0) and self.stores_128 > 0


def _specialise(fn, args: dict, constexprs: dict, ptr_types: dict):
    """Signature, constants and attributes as a real launch would give for these argument values."""
    from triton.backends.compiler import BaseBackend

    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            consts[name] = constexprs[name]
        elif name in ptr_types:
            signature[name] = "*" + ptr_types[name]
            attrs[(i,)] = BaseBackend.parse_attr("D")
        else:
            value = args[name]
            if value == 1:
                signature[name] = "constexpr"
                consts[name] = 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = BaseBackend.parse_attr("D")
    return signature, consts, attrs


def _block_label(meta: dict) -> str:
    """The block constexprs in the kernel's order (the last one is the contiguous axis), and warps."""
    return "x".join(str(v) for k, v in meta.items() if k.startswith("BLOCK")) + f"/w{meta['num_warps']}"


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                f"--gpu-name={sm_arch_from_capability(arch)}",
                src,
                "-o",
                os.path.join(tmp, "k.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return (int(regs.group(1)) if regs else -1), sum(spills)


def _count(ptx: str, kind: str) -> tuple[int, int]:
    wide = sum(1 for m in _WIDE_ACCESS.finditer(ptx) if m.group(1) == kind)
    total = sum(1 for m in _ANY_ACCESS.finditer(ptx) if m.group(1) == kind)
    return wide, total


def compile_kernels(
    arch: int, dtype: str, channels_last: bool, ptx_dir: str | None = None, bwd_stages: int | None = None
) -> list[KernelReport]:
    """Compile forward and backward in every mode for ``arch`` (e.g. 90) and report on each;
    ``bwd_stages`` overrides the backward's num_stages (its walk prefetched through cp.async)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..common import compute_dtype
    from .gate_bwd import bwd_config, bwd_plan, gate_bwd_kernel, gate_bwd_reduce_kernel
    from .gate_fwd import fwd_plan, gate_fwd_kernel
    from .gate_math import COMBINE_CODES

    torch_dtype = DTYPES[dtype]
    compute = next(k for k, v in DTYPES.items() if v == compute_dtype(torch_dtype))
    layout = "channels_last" if channels_last else "nchw"
    target = GPUTarget("cuda", arch, 32)
    x = torch.empty((N, C, H, W), device="meta", dtype=torch_dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    bcfg = bwd_config(N, C, H * W, channels_last, torch_dtype.itemsize, NUM_SMS)
    if bwd_stages is not None:
        bcfg = bcfg._replace(num_stages=bwd_stages)
    # The launchers' own plans: the scalar arguments and block constexprs a real launch passes.
    fplan, bplan = fwd_plan(x), bwd_plan(x, bcfg)
    fwd_ptrs = {"x_ptr": dtype, "mc_ptr": dtype, "ms_ptr": dtype, "y_ptr": dtype}
    bwd_ptrs = {
        "g_ptr": dtype,
        "x_ptr": dtype,
        "mw_ptr": dtype,
        "mf_ptr": dtype,
        "gx_ptr": dtype,
        "part_ptr": compute,
    }
    reduce_ptrs = {"part_ptr": compute, "gmc_ptr": dtype, "gms_ptr": dtype}
    # g with x's strides, as a training step hands it over.
    bwd_args = (*bplan.args, *bplan.args[2:], *bplan.args_after_g)
    reports = []
    for mode, (combine, has_mc, has_ms) in GATE_MODES.items():
        has_mw, has_mf = (has_mc, has_ms) if bplan.walk_is_c else (has_ms, has_mc)
        common = {"COMBINE": COMBINE_CODES[combine], "RESIDUAL": True}
        jobs = [
            (
                "gate_fwd_kernel",
                gate_fwd_kernel,
                fplan.meta,
                fplan.args,
                fwd_ptrs,
                {"HAS_MC": has_mc, "HAS_MS": has_ms},
            ),
            (
                "gate_bwd_kernel",
                gate_bwd_kernel,
                bplan.meta,
                bwd_args,
                bwd_ptrs,
                {"HAS_MW": has_mw, "HAS_MF": has_mf},
            ),
        ]
        if mode == "sum":  # stage two of the backward does not depend on the mode
            reduce_args = (*bplan.reduce_args, bplan.reduce_programs[0])
            flags = {"HAS_MC": has_mc, "HAS_MS": has_ms}
            jobs.append(
                ("gate_bwd_reduce_kernel", gate_bwd_reduce_kernel, bplan.reduce_meta, reduce_args, reduce_ptrs, flags)
            )
        for name, fn, meta, scalars, ptrs, flags in jobs:
            constexprs = {k: v for k, v in meta.items() if k != "num_warps"} | flags
            if name == "gate_fwd_kernel":
                constexprs |= common
            elif name == "gate_bwd_kernel":
                constexprs |= common | {"STORE_GX": True}
            scalar_names = [a for a in fn.arg_names if a not in ptrs and a not in constexprs]
            args = dict(zip(scalar_names, scalars, strict=True))
            signature, consts, attrs = _specialise(fn, args, constexprs, ptrs)
            src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
            compiled = triton.compile(src, target=target, options={"num_warps": meta["num_warps"]})
            ptx = compiled.asm["ptx"]
            if ptx_dir:
                os.makedirs(ptx_dir, exist_ok=True)
                with open(os.path.join(ptx_dir, f"{name}-{mode}-{dtype}-{layout}-sm_{arch}.ptx"), "w") as f:
                    f.write(ptx)
            loads_128, loads = _count(ptx, "ld")
            stores_128, stores = _count(ptx, "st")
            regs, spills = _ptxas_report(ptx, arch)
            reports.append(
                KernelReport(
                    name,
                    mode,
                    dtype,
                    layout,
                    _block_label(meta),
                    loads_128,
                    loads,
                    stores_128,
                    stores,
                    regs,
                    spills,
                    compiled.metadata.shared,
                    len(_ASYNC_COPY_128.findall(ptx)),
                )
            )
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="sm_80, sm_90, … (default sm_90)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--ptx", metavar="DIR", help="write each kernel's PTX here")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--bwd-stages", type=int, help="the backward's num_stages (default: the heuristic's)")
    args = parser.parse_args(argv)
    if interpreter_requested():
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    arch = int(args.arch.removeprefix("sm_"))
    reports = compile_kernels(arch, args.dtype, args.channels_last, args.ptx, args.bwd_stages)
    if args.json:
        print(json.dumps([asdict(r) | {"wide": r.wide} for r in reports], indent=1))
        return 0
    print(
        f"{'kernel':<23} {'mode':<13} {'dtype':<5} {'layout':<13} {'block':<14} "
        f"{'ld128/ld':>8} {'st128/st':>8} {'cp.async':>8} {'regs':>5} {'spill':>5} {'smem':>6}  128-bit"
    )
    for r in reports:
        print(
            f"{r.kernel:<23} {r.mode:<13} {r.dtype:<5} {r.layout:<13} {r.block:<14} "
            f"{r.loads_128:>3}/{r.loads_total:<4} {r.stores_128:>3}/{r.stores_total:<4} {r.async_copies_128:>8} "
            f"{r.registers:>5} "
            f"{r.spill_bytes:>5} {r.shared_bytes:>6}  {'yes' if r.wide else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
