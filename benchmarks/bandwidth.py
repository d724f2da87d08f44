"""The byte-count floor of each gate op and the device's measured copy bandwidth (the roof).

    gate_fwd     reads x, writes y                          2·|x| + |mc| + |ms|
    gate_bwd     reads g, x, writes gx (+ mc, ms in, gmc, gms out)  3·|x| + 2·(|mc| + |ms|)
    gate_fwdbwd  both                                       5·|x| + 3·(|mc| + |ms|)

|x| = N·C·H·W·itemsize, |mc| = N·C·itemsize, |ms| = N·H·W·itemsize (maps in x's dtype here).
``python -m benchmarks.bandwidth`` prints the floor for the benchmark shapes (NOTES.md).
"""

import argparse

import torch

from bam_fused.common import CIFAR_BAM_SHAPES, DTYPES, RESNET50_BAM_SHAPES

from .cases import GATE_OPS
from .timing import Sampling, compare_eager, compare_graphs, measure

# (full-size passes, small-map passes) per op: the minimum any implementation must move.
PASSES = {"gate_fwd": (2, 1), "gate_bwd": (3, 2), "gate_fwdbwd": (5, 3)}


def gate_bytes_min(op: str, shape: tuple, itemsize: int) -> int:
    """Bytes the op must move at least for x of ``shape`` (N, C, H, W), maps of the same itemsize."""
    n, c, h, w = shape
    full, maps = PASSES[op]
    return (full * n * c * h * w + maps * (n * c + n * h * w)) * itemsize


def copy_gbps(device: torch.device, mode: str = "do_bench", nbytes: int | None = None) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 B/s), counting bytes read plus bytes written,
    timed the way ``mode`` times everything else so that % of copy compares like with like:
    "do_bench" (:func:`benchmarks.timing.measure`, the tuning sweep's timer), or a mode of
    :data:`benchmarks.timing.MODES`.

    The default size (1 GiB on CUDA) dwarfs any L2; 32 MiB on CPU keeps the smoke run fast.
    """
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**25)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)
    if mode == "do_bench":
        ms = measure(copy, device, warmup_ms=20, rep_ms=200, cpu_reps=5).ms_median
    else:
        sampling = Sampling(rounds=5)
        if mode == "eager":
            ms = compare_eager({"copy": [copy]}, device, sampling)["copy"].ms_median
        else:
            timings, _, errors = compare_graphs({"copy": lambda: copy}, 1, device, sampling)
            if errors:
                raise RuntimeError(f"copy graph: {errors['copy']}")
            ms = timings["copy"].ms_median
    return 2 * nbytes / (ms * 1e-3) / 1e9


def floor_table(copy_tbps: float = 3.0) -> str:
    """Markdown table of the floor per op and shape, with the time it takes at ``copy_tbps`` TB/s."""
    lines = [
        f"| shape (N, C, H, W) | dtype | op | bytes_min (MB) | floor at {copy_tbps:g} TB/s (µs) |",
        "|---|---|---|---:|---:|",
    ]
    for shape in RESNET50_BAM_SHAPES + CIFAR_BAM_SHAPES:
        for dtype in ("bf16", "fp32"):
            for op in GATE_OPS:
                b = gate_bytes_min(op, shape, DTYPES[dtype].itemsize)
                us = b / (copy_tbps * 1e12) * 1e6
                lines.append(f"| {shape} | {dtype} | {op} | {b / 1e6:.1f} | {us:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-tbps", type=float, default=3.0, help="copy bandwidth for the time column")
    print(floor_table(parser.parse_args(argv).copy_tbps))


if __name__ == "__main__":
    main()
