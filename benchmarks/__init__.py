"""Benchmarks of the fused BAM gate against eager PyTorch and torch.compile.

Run with ``pytest benchmarks/`` on a CUDA machine (``--quick`` for the CPU smoke run);
``python -m benchmarks.report`` renders the newest result file. See ``benchmarks/NOTES.md``.
"""
