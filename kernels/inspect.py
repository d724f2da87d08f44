"""Compile the gate kernels ahead of time for a GPU target, without a GPU, and report on them.

    python -m bam_fused.kernels.inspect --arch sm_90 --dtype bf16 [--channels-last] [--ptx DIR] [--json]

For every kernel at representative specialisations (each combine mode, channel-only and
spatial-only, the block shapes the launch heuristics pick for a ResNet-50 BAM map; the
backward's reduction once), it prints whether the global loads and stores are 128-bit (the
reduction's strided partial loads are not meant to be), the registers, spills and shared
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

DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp64": "fp64"}
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
# (name, combine, has_mc, has_ms)
MODES = [
    ("sum", "sum", True, True),
    ("product", "product", True, True),
    ("max", "max", True, True),
    ("channel-only", "sum", True, False),
    ("spatial-only", "sum", False, True),
]
# A ResNet-50 BAM map (bam1: 256 channels at 56×56): every size is a multiple of 16.
N, C, HW = 64, 256, 56 * 56

_WIDE_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z0-9_]+)*\.(v4\.(?:b32|f32|u32)|v2\.(?:b64|f64|u64))\b")
_ANY_ACCESS = re.compile(r"\b(ld|st)\.global\b")


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

    @property
    def wide(self) -> bool:
        """All bulk traffic 128-bit: at least one 128-bit load and store, as many as the tile needs."""
        return self.loads_128 > 0 and self.stores_128 > 0


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


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src,
             "-o", os.path.join(tmp, "k.cubin")],  # fmt: skip
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


def compile_kernels(arch: int, dtype: str, channels_last: bool, ptx_dir: str | None = None) -> list[KernelReport]:
    """Compile forward and backward in every mode for ``arch`` (e.g. 90) and report on each."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .gate_bwd import bwd_config, bwd_grid, gate_bwd_kernel, gate_bwd_reduce_kernel
    from .gate_fwd import fwd_config, gate_fwd_kernel
    from .gate_math import COMBINE_CODES
    from .layout import cdiv

    compute = "fp64" if dtype == "fp64" else "fp32"
    strides = {"stride_n": C * HW, "stride_c": 1 if channels_last else HW, "stride_hw": C if channels_last else 1}
    layout = "channels_last" if channels_last else "nchw"
    target = GPUTarget("cuda", arch, 32)
    tl_compute = triton.language.float64 if compute == "fp64" else triton.language.float32
    reports = []
    for mode, combine, has_mc, has_ms in MODES:
        common = {"COMBINE": COMBINE_CODES[combine], "HAS_MC": has_mc, "HAS_MS": has_ms, "RESIDUAL": True,
                  "INT64": False, "COMPUTE": tl_compute}  # fmt: skip
        fcfg = fwd_config(C, HW, channels_last, ELEMENT_SIZE[dtype])
        bcfg = bwd_config(N, C, HW, channels_last, ELEMENT_SIZE[dtype], num_sms=132)
        import torch

        shaped = torch.empty((N, C, HW, 1), device="meta")
        walk_c, blocks, splits, per_split = bwd_grid(
            shaped.to(memory_format=torch.channels_last) if channels_last else shaped, bcfg
        )
        fwd_args = {"C": C, "HW": HW, **strides, "num_c_blocks": cdiv(C, fcfg["BLOCK_C"]),
                    "num_hw_blocks": cdiv(HW, fcfg["BLOCK_HW"])}  # fmt: skip
        bwd_args = {"C": C, "HW": HW, **strides, "num_blocks": blocks, "num_splits": splits,
                    "per_split": per_split}  # fmt: skip
        jobs = [
            ("gate_fwd_kernel", gate_fwd_kernel, fcfg, fwd_args,
             {"x_ptr": dtype, "mc_ptr": dtype, "ms_ptr": dtype, "y_ptr": dtype}),
            ("gate_bwd_kernel", gate_bwd_kernel, bcfg, bwd_args,
             {"g_ptr": dtype, "x_ptr": dtype, "mc_ptr": dtype, "ms_ptr": dtype, "gx_ptr": dtype,
              "gmc_part_ptr": compute, "gms_part_ptr": compute}),
        ]  # fmt: skip
        if mode == "sum":  # stage two of the backward does not depend on the mode
            jobs.append((
                "gate_bwd_reduce_kernel", gate_bwd_reduce_kernel, {"BLOCK": 1024, "num_warps": 4},
                {"gmc_total": N * C, "num_hw_blocks": splits if channels_last else blocks,
                 "gmc_programs": N * C // 1024, "gms_total": N * HW,
                 "num_c_splits": blocks if channels_last else splits, "HW": HW},
                {"gmc_part_ptr": compute, "gmc_ptr": dtype, "gms_part_ptr": compute, "gms_ptr": dtype},
            ))  # fmt: skip
        for name, fn, cfg, args, ptrs in jobs:
            if "BLOCK" in cfg:
                constexprs = {"HAS_MC": has_mc, "HAS_MS": has_ms, "BLOCK": cfg["BLOCK"]}
            else:
                constexprs = {**common, "BLOCK_C": cfg["BLOCK_C"], "BLOCK_HW": cfg["BLOCK_HW"]}
                if fn is gate_bwd_kernel:
                    constexprs["WALK_C"] = walk_c
            signature, consts, attrs = _specialise(fn, args, constexprs, ptrs)
            src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
            compiled = triton.compile(src, target=target, options={"num_warps": cfg["num_warps"]})
            ptx = compiled.asm["ptx"]
            if ptx_dir:
                os.makedirs(ptx_dir, exist_ok=True)
                with open(os.path.join(ptx_dir, f"{name}-{mode}-{dtype}-{layout}-sm_{arch}.ptx"), "w") as f:
                    f.write(ptx)
            loads_128, loads = _count(ptx, "ld")
            stores_128, stores = _count(ptx, "st")
            regs, spills = _ptxas_report(ptx, arch)
            reports.append(KernelReport(
                name, mode, dtype, layout,
                f"{cfg.get('BLOCK_C', cfg.get('BLOCK'))}x{cfg.get('BLOCK_HW', 1)}/w{cfg['num_warps']}",
                loads_128, loads, stores_128, stores, regs, spills, compiled.metadata.shared,
            ))  # fmt: skip
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="sm_80, sm_90, … (default sm_90)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--ptx", metavar="DIR", help="write each kernel's PTX here")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    arch = int(args.arch.removeprefix("sm_"))
    reports = compile_kernels(arch, args.dtype, args.channels_last, args.ptx)
    if args.json:
        print(json.dumps([asdict(r) | {"wide": r.wide} for r in reports], indent=1))
        return 0
    print(f"{'kernel':<23} {'mode':<13} {'dtype':<5} {'layout':<13} {'block':<14} "
          f"{'ld128/ld':>8} {'st128/st':>8} {'regs':>5} {'spill':>5} {'smem':>6}  128-bit")  # fmt: skip
    for r in reports:
        print(f"{r.kernel:<23} {r.mode:<13} {r.dtype:<5} {r.layout:<13} {r.block:<14} "
              f"{r.loads_128:>3}/{r.loads_total:<4} {r.stores_128:>3}/{r.stores_total:<4} {r.registers:>5} "
              f"{r.spill_bytes:>5} {r.shared_bytes:>6}  {'yes' if r.wide else 'NO'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
