"""Ahead-of-time compilation for sm_80 and sm_90 without a GPU: every kernel a gate call or a
FusedBAM training step launches lowers to PTX and a cubin, without spills on sm_90, and the
passes over tensors of x's size are 128-bit in every dtype and both layouts (what vectorised
memory traffic needs); the gate backward's num_stages knob really routes its walk through cp.async."""

import json
import os
import subprocess
import sys

import pytest

from bam_fused.common import RESNET50_BAM_SHAPES

SCRIPT = """
import json, sys
from dataclasses import asdict
from benchmarks.ptx_report import compile_kernels
out = []
for arch in (80, 90):
    for dtype in ("fp16", "bf16", "fp32", "fp64"):
        for cl in (False, True):
            out += [asdict(r) | {"wide": r.wide, "arch": arch} for r in compile_kernels(arch, dtype, cl)]
for cl in (False, True):
    out += [asdict(r) | {"wide": r.wide, "arch": 90, "bwd_stages": 3}
            for r in compile_kernels(90, "bf16", cl, bwd_stages=3)
            if r.kernel == "gate_bwd_kernel" and r.stores_bulk and "expanded" not in r.mode]
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def default_reports(reports):
    return [r for r in reports if "bwd_stages" not in r]


# The gate: forward and stage one per mode, the reduction once, stage one for y.sum()'s expanded g.
# The module, in every dtype (float64's batch tile holds bam1's 64 × 16): pool_reduce, channel_mlp
# fwd and bwd, stage one without gx, input_grad and its reduction, per variant.
GATE_KERNELS = 2 * 5 + 1 + 1
MODULE_KERNELS = 6 * 2


def test_every_kernel_compiles(default_reports):
    kernels = {(r["arch"], r["dtype"], r["layout"], r["kernel"], r["mode"]) for r in default_reports}
    assert len(kernels) == 2 * 2 * 4 * (GATE_KERNELS + MODULE_KERNELS)
    for r in default_reports:
        assert r["registers"] > 0, r
        # The target arch in the dtypes that run for speed; sm_80's ptxas and float64 (gradcheck
        # only) may spill a few bytes in the max backward.
        if r["arch"] == 90 and r["dtype"] != "fp64":
            assert r["spill_bytes"] == 0, r


def test_full_size_passes_are_128_bit(default_reports):
    """Each kernel that reads or writes a tensor of x's size: the gate forward, the module's first
    pass (loads prefetched by 16-byte cp.async) and its input gradient."""
    for r in default_reports:
        if r["kernel"] in ("gate_fwd_kernel", "pool_reduce_kernel", "input_grad_kernel"):
            assert r["wide"], r


def test_backward_bulk_accesses_are_128_bit(default_reports):
    """g and x loads and gx stores vectorise too (the partial sums are the narrow ones); the module's
    stage one, which writes no gx, still loads g and x 128-bit."""
    for r in default_reports:
        if r["kernel"] == "gate_bwd_kernel":
            assert r["loads_128"] >= 2 and r["async_copies_128"] == 0, r
            assert r["stores_128"] >= 1 or not r["stores_bulk"], r


def test_pipelined_backward_prefetches_g_and_x_by_16_byte_cp_async(reports):
    pipelined = [r for r in reports if r.get("bwd_stages") == 3]
    assert len(pipelined) == 2 * 5, pipelined
    for r in pipelined:
        # g and x of each chunk, for each stage in flight, leave the registers' path entirely.
        assert r["async_copies_128"] >= 2 and r["loads_128"] == 0 and r["stores_128"] >= 1, r
        assert r["spill_bytes"] == 0 and r["shared_bytes"] > 8192, r


def test_cli_writes_ptx(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ptx_report",
            "--arch",
            "sm_90",
            "--dtype",
            "bf16",
            "--channels-last",
            "--ptx",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO" not in proc.stdout.split()
    ptx = sorted(p.name for p in tmp_path.iterdir())
    assert len(ptx) == GATE_KERNELS + MODULE_KERNELS and all(p.endswith("channels_last-sm_90.ptx") for p in ptx)
    assert "ld.global.v4.b32" in (tmp_path / ptx[0]).read_text()


@pytest.mark.slow
def test_every_launch_fits_every_arch(tmp_path):
    """Every launch the plans would make, for every arch triton compiles that users have, at the
    ResNet-50/101, CIFAR and test shapes in every dtype and layout: no register spilled and no
    more shared memory than the arch has. A configuration the kernels' ``*_fits`` functions route to
    the per-op path is not launched, so not compiled: it is listed with its reason. The default
    survey, as ``benchmarks/results/ptx-bounds.json`` holds it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "bounds.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ptx_report", "--survey", str(out), "--check", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-5000:]
    table = json.loads(out.read_text())
    assert table["out_of_bounds"] == [] and table["launches"], proc.stdout
    archs = {row["arch"] for row in table["launches"]}
    assert archs == {75, 80, 86, 89, 90, 100, 120}
    for row in table["launches"]:
        assert row["spill_bytes"] == 0 and row["shared_bytes"] <= row["shared_limit"], row
    # What trains takes the fused path at the ResNet-50 shapes: float16 and float32 on every arch,
    # bfloat16 where it has tensor cores (from sm_80; sm_75 converts it in software). float64, for
    # gradcheck, takes the per-op path where its batch tile does not fit one program's registers.
    for r in table["routed"]:
        assert r["routed"], r
        if tuple(r["shape"]) in RESNET50_BAM_SHAPES:
            assert r["dtype"] == "fp64" or (r["dtype"] == "bf16" and r["arch"] == 75), r
