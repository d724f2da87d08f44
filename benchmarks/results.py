"""The result file: a header describing the machine and one record per (case, provider, mode).

    {"schema": 2, "device": ..., "torch": ..., "triton": ..., "cuda": ..., "python": ...,
     "date": ISO-8601, "copy_gbps": {mode: float}, "quick": bool, "compile_mode": str,
     "records": [{op, provider, dtype, layout, shape, shape_set, ms_median, ms_iqr, bytes_min,
                  gbps, pct_copy_bw, speedup_vs_released, speedup_vs_eager, speedup_vs_compiled,
                  peak_mem_bytes, extra}, ...]}

``extra.mode`` is the timer (``eager``: wall time as a training loop sees it; ``cuda_graph``:
device time; see benchmarks/timing.py), ``extra.samples_ms`` every sample, ``extra.profile`` the
profiler pass where there is one. The file is rewritten after every record, so a run killed by its
time guard keeps what it measured; a run given an existing file appends to it (gpu_run.sh's
stages share one). Derived fields (gbps, %, speedups) are recomputed on each write from the raw
ones, each against the same mode's figures only.

Schema 1 (runs 1-3, before the released provider and the modes) is read by ``report --verify``
only: its "eager" gate was the released code's, timed by do_bench after an L2 flush.
"""

import datetime
import json
import platform
import re
from pathlib import Path

import torch

from .cases import BASELINES
from .timing import MODES

SCHEMA = 2
RECORD_FIELDS = (
    "op",
    "provider",
    "dtype",
    "layout",
    "shape",
    "shape_set",
    "ms_median",
    "ms_iqr",
    "bytes_min",
    "gbps",
    "pct_copy_bw",
    *(f"speedup_vs_{b}" for b in BASELINES),
    "peak_mem_bytes",
    "extra",
)
HEADER_FIELDS = ("schema", "device", "torch", "triton", "cuda", "python", "date", "copy_gbps", "quick")
DEFAULT_DIR = Path(__file__).resolve().parent / "results"


def environment(device: torch.device) -> dict:
    """Device name and software versions (also the header of the GPU tests' result file)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    env = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu-{platform.machine()}",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        env["sm_count"] = props.multi_processor_count
        env["l2_bytes"] = getattr(props, "L2_cache_size", None)
        env["memory_bytes"] = props.total_memory
    return env


def write_table(path, device: torch.device, rows: list, **fields) -> None:
    """A tool's table as JSON: the machine and versions (:func:`environment`), ``fields`` (what was
    measured: shape, dtype, mode, ...), then ``rows``."""
    with open(path, "w") as f:
        json.dump({**environment(device), **fields, "rows": rows}, f, indent=1)
        f.write("\n")


def result_path(results_dir, device_name: str, date: str) -> Path:
    """``<dir>/<device>-<date>.json`` with the device name made file-safe."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    stamp = re.sub(r"[^0-9T]", "", date[:19]).replace("T", "-")
    return Path(results_dir) / f"{slug}-{stamp}.json"


def mode(record: dict) -> str:
    return record["extra"]["mode"]


def derive(records: list[dict], copy_gbps: dict) -> None:
    """Fill gbps, pct_copy_bw and the speedups in place.

    Speedups compare providers on the same (op, dtype, layout, shape, mode) against each of
    ``BASELINES`` the group has; % of copy uses the copy bandwidth measured in the same mode.
    """
    by_key = {}
    key = lambda r: (r["op"], r["dtype"], r["layout"], tuple(r["shape"]), mode(r))
    for r in records:
        by_key.setdefault(key(r), {})[r["provider"]] = r
    for r in records:
        ms = r["ms_median"]
        roof = copy_gbps.get(mode(r))
        if r.get("bytes_min") and ms:
            r["gbps"] = r["bytes_min"] / (ms * 1e-3) / 1e9
            r["pct_copy_bw"] = 100 * r["gbps"] / roof if roof else None
        else:
            r["gbps"] = r["pct_copy_bw"] = None
        group = by_key[key(r)]
        for base in BASELINES:
            ref = group.get(base)
            r[f"speedup_vs_{base}"] = ref["ms_median"] / ms if ref and ref["ms_median"] and ms else None


class ResultsFile:
    """Collects records and keeps ``path`` up to date (written at creation and after every add).

    An existing file at ``path`` is continued: its header stays, new records are appended.
    """

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        if self.path.exists():
            data = load(self.path)
            self.records: list[dict] = data.pop("records")
            self.header = data
        else:
            self.header = {"schema": SCHEMA, **header}
            self.records = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, **fields) -> dict:
        unknown = set(fields) - set(RECORD_FIELDS)
        if unknown:
            raise ValueError(f"unknown record fields {sorted(unknown)}")
        record = {f: fields.get(f) for f in RECORD_FIELDS}
        record["shape"] = list(record["shape"])
        record["extra"] = record["extra"] or {}
        if record["extra"].get("mode") not in MODES:
            raise ValueError(f"extra.mode must be one of {MODES}, got {record['extra'].get('mode')!r}")
        self.records.append(record)
        self.write()
        return record

    def add_case(self, case, provider: str, mode: str, timing, **fields) -> dict:
        """A record of ``provider`` in ``case`` (a :mod:`benchmarks.cases` case) timed in ``mode`` as
        ``timing`` (a :class:`benchmarks.timing.Timing`, its samples kept), plus ``fields``."""
        keys = ("op", "dtype", "layout", "shape", "shape_set")
        extra = {"mode": mode, **timing.extra(), **fields.pop("extra", {})}
        return self.add(
            **{k: getattr(case, k) for k in keys},
            provider=provider,
            ms_median=timing.ms_median,
            ms_iqr=timing.ms_iqr,
            extra=extra,
            **fields,
        )

    def write(self) -> None:
        derive(self.records, self.header.get("copy_gbps") or {})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.header, "records": self.records}, indent=1) + "\n")
        tmp.replace(self.path)


def load(path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, expected {SCHEMA}")
    return data


def newest(results_dir=DEFAULT_DIR) -> Path:
    """The result file (of this schema) in ``results_dir`` with the latest ``date`` in its header."""
    files = [p for p in Path(results_dir).glob("*.json")]
    dated = []
    for p in files:
        try:
            dated.append((datetime.datetime.fromisoformat(load(p)["date"]), p))
        except (ValueError, KeyError, TypeError):
            continue
    if not dated:
        raise FileNotFoundError(f"no benchmark result file of schema {SCHEMA} in {results_dir}")
    return max(dated)[1]
