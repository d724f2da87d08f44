"""Device time against host-inclusive time for the gate, and the ResNet-50 step, on a GPU.

    python -m benchmarks.device_time [--out FILE.json] [--quick] [--gate-only]

For the ResNet-50 BAM shapes (bf16, batch 64, both layouts) it times the fused and the eager
gate two ways: ``do_bench`` (CUDA events around each call, after an L2 flush: host dispatch
longer than the flush shows up) and ``do_bench_cudagraph`` (the calls replayed from a CUDA
graph: device time alone). Forward under no_grad; backward both through the launchers
directly and through autograd, as a training step runs it. The difference is the host cost
of each path; the graph numbers are the kernels' distance to the roof. Then the ResNet-50
training step (no attention / eager BAM / FusedBAM), each timed after the others have warmed.
"""

import argparse
import json
import sys

import torch

from bam_fused.common import RESNET50_BAM_SHAPES
from bam_fused.kernels import gate_bwd

from .bandwidth import copy_gbps, gate_bytes_min
from .providers import gate_eager, gate_fused, gate_inputs, resnet_model, resnet_step
from .timing import measure_steps


def _times(fn, graph: bool) -> dict:
    """Median ms by events (host-inclusive past the flush) and by graph replay (device only)."""
    from triton.testing import do_bench, do_bench_cudagraph

    out = {"events_ms": do_bench(fn, warmup=5, rep=25, return_mode="median")}
    if graph:  # autograd's engine cannot be captured here (stream capture invalidated)
        out["graph_ms"] = do_bench_cudagraph(fn, rep=25, return_mode="median")
    return out


def gate_cases(shape, layout, device):
    """(name, op for the byte floor, callable) for one shape and layout."""
    x, mc, ms, g = gate_inputs(shape, "bf16", layout, device, requires_grad=True)
    xd, mcd, msd = x.detach(), mc.detach(), ms.detach()
    y_fused, y_eager = gate_fused(x, mc, ms), gate_eager(x, mc, ms)
    grad = lambda y: lambda: torch.autograd.grad(y, (x, mc, ms), g, retain_graph=True)

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn(xd, mcd, msd)

        return run

    return [
        ("fused_fwd", "gate_fwd", fwd(gate_fused)),
        ("eager_fwd", "gate_fwd", fwd(gate_eager)),
        ("fused_bwd_launchers", "gate_bwd", lambda: gate_bwd(g, xd, mcd, msd, combine="product", residual=True)),
        ("fused_bwd_autograd", "gate_bwd", grad(y_fused)),
        ("eager_bwd_autograd", "gate_bwd", grad(y_eager)),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the records here as JSON")
    parser.add_argument("--quick", action="store_true", help="first shape only, no ResNet step")
    parser.add_argument("--gate-only", action="store_true", help="no ResNet step (gpu_run.sh times it in bench)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.device_time needs a CUDA device; nothing measured")
        return 0
    device = torch.device("cuda")
    roof = copy_gbps(device)
    print(f"device {torch.cuda.get_device_name()}  copy {roof:.0f} GB/s")
    records = []
    for shape in RESNET50_BAM_SHAPES[:1] if args.quick else RESNET50_BAM_SHAPES:
        for layout in ("nchw", "channels_last"):
            for name, op, fn in gate_cases(shape, layout, device):
                fn()
                t = _times(fn, graph=not name.endswith("autograd"))
                floor = gate_bytes_min(op, shape, 2)
                pct = {k: 100 * floor / (v * 1e-3) / 1e9 / roof for k, v in t.items() if k.endswith("_ms")}
                records.append(
                    {
                        "case": name,
                        "op": op,
                        "shape": list(shape),
                        "layout": layout,
                        **t,
                        **{f"pct_copy_{k[:-3]}": v for k, v in pct.items()},
                    }
                )
                cells = "  ".join(f"{k[:-3]} {t[k]:.4f} ms ({pct[k]:4.1f} %)" for k in t if k.endswith("_ms"))
                print(f"{name:<20} {layout:<13} {str(shape):<18} {cells}")
    if not (args.quick or args.gate_only):
        for provider in ("none", "eager", "fused", "none", "eager", "fused"):
            step = resnet_step(resnet_model(provider, 50, device), 64, 224, device)
            t = measure_steps(step, device, warmup=5, iters=15)
            records.append({"case": f"resnet50_step_{provider}", "ms_median": t.ms_median, "ms_iqr": t.ms_iqr})
            print(f"resnet50 step {provider:<6} {t.ms_median:.2f} ± {t.ms_iqr:.2f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gbps": roof, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
