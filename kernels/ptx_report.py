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

import torch

from ..common import DTYPES, GATE_MODES, RESNET50_BAM_SHAPES, interpreter_requested
from .layout import captured_launches

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


def _block_label(kwargs: dict) -> str:
    """A launch's block constexprs in the kernel's order, and its warps."""
    return "x".join(str(v) for k, v in kwargs.items() if k.startswith("BLOCK")) + f"/w{kwargs['num_warps']}"


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


def _gate_launches(dtype: torch.dtype, channels_last: bool, bwd_stages: int | None) -> list:
    """(mode, kernel, args, kwargs) of the gate's launches at bam1's map, per mode: forward, the
    backward's two stages (the reduction once: it does not depend on the mode); and stage one
    once more for an expanded g."""
    from .gate_bwd import bwd_config, gate_bwd
    from .gate_fwd import gate_fwd

    x = torch.empty((N, C, H, W), device="meta", dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    config = bwd_config(N, C, H * W, channels_last, dtype.itemsize, NUM_SMS)
    if bwd_stages is not None:
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


def _module_launches(dtype: torch.dtype, channels_last: bool) -> list:
    """(variant, kernel, args, kwargs) of every launch of one FusedBAM training step (bam1's map,
    train mode), per variant."""
    from bam_fused import FusedBAM
    from bam_fused.fused_bam import fused_bam
    from bam_fused.fused_path import plan_fused_call

    jobs = []
    for variant in ("paper", "official"):
        module = FusedBAM(C, variant=variant).to(device="meta", dtype=dtype)
        x = torch.empty((N, C, H, W), device="meta", dtype=dtype, requires_grad=True)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with captured_launches() as launches:
            fused_bam(x, plan_fused_call(module, x)).backward(torch.empty_like(x))
        # The gate's own launches are reported above; the module's stage one skips gx.
        module_kernels = ("pool_reduce", "channel_mlp", "input_grad", "gate_bwd_kernel")
        jobs += [(variant, *launch) for launch in launches if launch[0].__name__.startswith(module_kernels)]
    return jobs


def compile_kernels(
    arch: int, dtype: str, channels_last: bool, ptx_dir: str | None = None, bwd_stages: int | None = None
) -> list[KernelReport]:
    """Compile the gate's kernels in every mode and the fused module's in both variants, as their
    launchers launch them on bam1's map, for ``arch`` (e.g. 90), and report on each;
    ``bwd_stages`` overrides the gate backward's num_stages (its walk prefetched through cp.async)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    torch_dtype = DTYPES[dtype]
    layout = "channels_last" if channels_last else "nchw"
    target = GPUTarget("cuda", arch, 32)
    jobs = _gate_launches(torch_dtype, channels_last, bwd_stages)
    if torch_dtype != torch.float64:  # fp64 is for gradcheck of the gate alone
        jobs += _module_launches(torch_dtype, channels_last)
    reports = []
    for mode, fn, args, kwargs in jobs:
        name = fn.__name__
        stores_bulk = kwargs.get("STORE_GX", True)
        if not stores_bulk:
            mode = f"{mode}, no gx"
        signature, consts, attrs = _specialise(fn, args, kwargs)
        src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        compiled = triton.compile(src, target=target, options=options)
        ptx = compiled.asm["ptx"]
        if ptx_dir:
            os.makedirs(ptx_dir, exist_ok=True)
            label = mode.replace(" ", "").replace("(", "-").replace(")", "")
            with open(os.path.join(ptx_dir, f"{name}-{label}-{dtype}-{layout}-sm_{arch}.ptx"), "w") as f:
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
                _block_label(kwargs),
                loads_128,
                loads,
                stores_128,
                stores,
                regs,
                spills,
                compiled.metadata.shared,
                len(_ASYNC_COPY_128.findall(ptx)),
                stores_bulk,
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
