"""Shared by the GPU checks and the sanitizer driver: import paths, the device, the result file,
and a count of the Triton kernel variants a run compiles.

The checks run on CUDA (``pytest -m gpu tests/gpu``). Each writes what it measured into
``$BAM_GPU_RESULTS/gpu_checks.json`` when that variable names a directory (gpu_run.sh sets
it), so the GPU run's evidence survives the machine. Off CUDA the shapes shrink so that the
logic can be exercised under the Triton interpreter (``pytest --noconftest tests/gpu``).

Loaded as a pytest plugin (``PYTHONPATH=tests/gpu pytest -p gpu_common ...``) it prints, at the
end of the session, the line of :meth:`KernelVariants.summary`: on CUDA how many kernels Triton
compiled and the seconds that took, under the interpreter how many a GPU would compile. gpu_run.sh
budgets its stages from these counts.
"""

import contextlib
import fcntl
import inspect
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# The repo root (benchmarks.providers) and tests/ (gate_cases, exact) for scripts and --noconftest runs.
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from exact import assert_as_exact_as  # noqa: E402
from gate_cases import assert_close, make_inputs, poisoned_like, reference64  # noqa: E402

__all__ = [
    "DEVICE",
    "ON_GPU",
    "ROOT",
    "KernelVariants",
    "assert_as_exact_as",
    "assert_close",
    "kernel_variants",
    "make_inputs",
    "poisoned_like",
    "record",
    "reference64",
]

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
RESULTS_ENV = "BAM_GPU_RESULTS"
RESULTS_FILE = "gpu_checks.json"


def record(check: str, **payload) -> None:
    """Store ``payload`` under ``check`` in the GPU result file (a no-op without $BAM_GPU_RESULTS).
    Safe from several processes (pytest-xdist workers): the read-modify-write holds a lock on the
    directory, which adds no file to it."""
    out = os.environ.get(RESULTS_ENV)
    if not out:
        return
    from benchmarks.results import environment

    path = Path(out) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"env": environment(DEVICE), "checks": {}}
        data["checks"][check] = payload
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        tmp.replace(path)
    finally:
        os.close(lock)


# Launch options that are part of a compiled kernel's key besides its arguments.
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


class KernelVariants:
    """What a run asked of Triton's JIT: the distinct specialisations per kernel (each is one
    compile on a GPU); on CUDA the compiles and the seconds they took (from Triton's cache-miss
    hook to its post-compile hook; a kernel found in Triton's disk cache counts too, and takes
    little time), summed over the processes merged in (pytest-xdist workers each compile their
    own); under the interpreter also the launches."""

    def __init__(self, processes: int = 1):
        self.keys: dict[str, set] = {}
        self.launches = Counter()
        self.compiled = 0
        self.compile_s = 0.0
        self.processes = processes

    @property
    def distinct(self) -> int:
        return sum(len(keys) for keys in self.keys.values())

    def add(self, kernel: str, key) -> None:
        keys = self.keys.setdefault(kernel, set())
        if key not in keys:
            keys.add(key)
            if not ON_GPU:
                self.compiled += 1

    def to_json(self) -> dict:
        return {
            "keys": {name: sorted(map(str, keys)) for name, keys in self.keys.items()},
            "launches": dict(self.launches),
            "compiled": self.compiled,
            "compile_s": self.compile_s,
        }

    def merge(self, data: dict) -> None:
        """Add another process's :meth:`to_json`."""
        for name, keys in data["keys"].items():
            self.keys.setdefault(name, set()).update(keys)
        self.launches.update(data["launches"])
        self.compiled += data["compiled"]
        self.compile_s += data["compile_s"]
        self.processes += 1

    def summary(self) -> str:
        per_kernel = ", ".join(f"{name} {len(keys)}" for name, keys in sorted(self.keys.items()))
        if ON_GPU:
            return (
                f"kernel variants: {self.distinct} distinct, {self.compiled} compiled in {self.compile_s:.1f} s "
                f"by {self.processes} process(es) ({per_kernel})"
            )
        launches = sum(self.launches.values())
        return f"kernel variants: {self.distinct} a GPU would compile, {launches} launches ({per_kernel})"


def _interpreter_key(fn, args: tuple, kwargs: dict) -> tuple:
    """The key under which Triton's JIT would compile this launch of ``fn`` on a GPU: constexpr
    values, pointer dtypes and 16-byte alignment, integers equal to 1 (made constants) or divisible
    by 16 and their width, and the launch options."""
    signature = inspect.signature(fn)
    bound = signature.bind(*args, **{k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS})
    bound.apply_defaults()
    key = []
    for name, value in bound.arguments.items():
        if "constexpr" in str(signature.parameters[name].annotation):
            key.append(repr(value))
        elif hasattr(value, "data_ptr"):
            key.append((str(value.dtype), value.data_ptr() % 16 == 0))
        elif isinstance(value, bool):
            key.append("i1")
        elif isinstance(value, int):
            key.append(1 if value == 1 else ("i32" if -(2**31) <= value < 2**31 else "i64", value % 16 == 0))
        elif isinstance(value, float):
            key.append("fp32")
        else:
            key.append(repr(value))
    return (*key, *sorted((k, v) for k, v in kwargs.items() if k in _LAUNCH_OPTIONS))


@contextlib.contextmanager
def kernel_variants():
    """Count the Triton kernel variants compiled (CUDA) or that would be (interpreter) inside the
    ``with``: yields a :class:`KernelVariants` that fills as kernels launch."""
    variants = KernelVariants()
    if ON_GPU:
        from triton import knobs

        started = {}

        def on_miss(key, fn, **kwargs):
            started[(fn.name, str(key))] = time.perf_counter()
            return False  # go on and compile

        def on_compiled(key, fn, **kwargs):
            variants.add(fn.name, str(key))
            variants.compiled += 1
            variants.compile_s += time.perf_counter() - started.pop((fn.name, str(key)), time.perf_counter())

        saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = on_miss, on_compiled
        try:
            yield variants
        finally:
            knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved
        return
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        variants.launches[self.__name__] += 1
        variants.add(self.__name__, _interpreter_key(self.fn, args, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield variants
    finally:
        InterpretedFunction.run = original


# As a pytest plugin (-p gpu_common): the session's kernel variants, printed at its end; under
# pytest-xdist each worker counts its own and hands them to the controller, which prints the sum.
_session = {}


def pytest_sessionstart(session):
    stack = contextlib.ExitStack()
    _session["stack"], _session["variants"] = stack, stack.enter_context(kernel_variants())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook sends the worker's output
def pytest_sessionfinish(session):
    _session["stack"].close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["kernel_variants"] = _session["variants"].to_json()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown where xdist is not installed
def pytest_testnodedown(node, error):
    data = getattr(node, "workeroutput", {}).get("kernel_variants")
    if data:
        _session.setdefault("workers", KernelVariants(processes=0)).merge(data)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_session.get("workers", _session["variants"]).summary())
