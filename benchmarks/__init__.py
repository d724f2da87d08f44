"""Benchmarks and tools above the package: the fused BAM module and gate against the released
code, eager PyTorch and torch.compile; pass, call and host-time counts; the PTX report.

Run with ``pytest benchmarks/`` on a CUDA machine (``--quick`` for the CPU smoke run);
``python -m benchmarks.report`` renders the newest result file. See ``benchmarks/NOTES.md``.
"""
