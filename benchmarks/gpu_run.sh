#!/usr/bin/env bash
# The one GPU call: install, record the environment, prove the kernels, benchmark.
#
#   bash benchmarks/gpu_run.sh OUTDIR            # on a bare CUDA machine, from the repo root
#   bash benchmarks/gpu_run.sh --dry-run OUTDIR  # list the stages and budgets; runs nothing
#   GPU_RUN_STAGES=bench,device_time bash benchmarks/gpu_run.sh OUTDIR   # a subset (reruns while tuning)
#
# Every stage runs under its own `timeout`, and the budgets add up to under 5 minutes, so a
# stage that overruns loses only its own tail: the benchmark and GPU-check result files are
# rewritten after every record. OUTDIR receives at most 8 files (the device tool returns 8):
#   env.txt  tests.log  sanitizer.log  gpu_checks.json  <device>-<date>.json  bench.log
#   device-time.json  host-time.json
# perf.md and perf.png are rendered from <device>-<date>.json afterwards, on any machine:
#   python -m benchmarks.report --results OUTDIR/<device>-<date>.json --out-md perf.md --out-png perf.png
# The last thing printed is a summary (the device tool returns only the output's tail).
set -uo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then
    DRY=1
    shift
fi
if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/gpu_run.sh [--dry-run] OUTDIR" >&2
    exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
OUT=$1
[[ $OUT == /* ]] || OUT="$ROOT/$OUT"
export OUT ROOT
export PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export BAM_GPU_RESULTS="$OUT"
export WORK=${TMPDIR:-/tmp}/bam_gpu_run.$$
export GPU_RUN_STAGES=${GPU_RUN_STAGES:-all}

# name | budget (s) | what it does. Order: correctness first, then the numbers the goals need.
STAGES=(
    "install|15|pip install --no-deps --no-build-isolation -e . (log: tests.log)"
    "env|8|nvidia-smi, torch/triton/CUDA/driver versions, compute-sanitizer version -> env.txt"
    "gpu_equiv|28|pytest -m gpu tests/gpu/test_gpu_equivalence.py: kernels vs float64, all modes/dtypes/layouts/odd maps"
    "bench|104|pytest benchmarks/ --results-dir OUTDIR: gate fwd/bwd/fwd+bwd, BAM module, ResNet-50 step, copy roof"
    "device_time|30|python -m benchmarks.device_time --gate-only: CUDA-graph device time vs events -> device-time.json"
    "host_time|20|python -m benchmarks.host_time: host µs per call, real and no-op kernels -> host-time.json"
    "sanitizer|45|sanitizer_driver.py plain (warms the JIT cache), then compute-sanitizer memcheck and racecheck"
    "gpu_probes|35|pytest -m gpu tests/gpu: determinism (20 runs), >2^31 elements, saved bytes + ResNet peak, compile"
    "core_tests|10|pytest -m gpu -x tests --ignore=tests/gpu: the suite's device tests, for as long as the budget allows"
)

run_pytest() {
    "$PY" -m pytest -q -p no:cacheprovider --tb=short -ra "$@"
}

stage_install() {
    "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
}

stage_env() {
    {
        echo "date: $(date -Is)"
        echo "host: $(uname -a)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
            --format=csv 2>&1
        nvidia-smi 2>&1 | head -n 15
        "$PY" - <<'PYEOF'
import platform, torch, triton
p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__} "
      f"cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}")
if p is not None:
    print(f"device {p.name} sm {p.major}.{p.minor} SMs {p.multi_processor_count} "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB memory {p.total_memory / 2**30:.1f} GiB")
PYEOF
        echo "compute-sanitizer: $(sanitizer_bin) $("$(sanitizer_bin)" --version 2>/dev/null | tail -n 1)"
        echo "git: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
}

stage_gpu_equiv() {
    run_pytest -m gpu tests/gpu/test_gpu_equivalence.py
}

stage_bench() {
    run_pytest benchmarks/ --results-dir "$OUT" > "$OUT/bench.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/bench.log"
    return $rc
}

stage_device_time() {
    "$PY" -m benchmarks.device_time --gate-only --out "$OUT/device-time.json"
}

stage_host_time() {
    "$PY" -m benchmarks.host_time --calls 100 --repeats 30 --out "$OUT/host-time.json"
}

sanitizer_bin() {
    local cs
    cs=$(command -v compute-sanitizer) || cs=$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    echo "${cs:-compute-sanitizer}"
}

sanitize() {  # tool: the driver under compute-sanitizer, full log in $WORK, summary lines kept
    local tool=$1 log="$WORK/$1.log" rc
    # No caching allocator: every tensor is its own allocation, so memcheck sees overruns.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 36 "$(sanitizer_bin)" --tool "$tool" --print-limit 20 \
        "$PY" tests/gpu/sanitizer_driver.py > "$log" 2>&1
    rc=$?
    {
        echo "== $tool rc=$rc$([[ $rc == 124 ]] && echo ' (timed out: cases done so far below)')"
        grep -E "SUMMARY|Invalid|Race reported|hazard|MISMATCH|Error" "$log" | head -n 30
        grep -E "^sanitizer_driver" "$log" | tail -n 1
        grep -cE "^case " "$log" | sed 's/^/cases done: /'
    } > "$WORK/$tool.summary"
    return $rc
}

stage_sanitizer() {
    local rc=0 mc rc_mc rc_rc
    mkdir -p "$WORK"
    # A plain run first: Triton compiles outside the sanitizer and the cubins come from its cache.
    timeout 18 "$PY" tests/gpu/sanitizer_driver.py > "$WORK/plain.log" 2>&1 || rc=$?
    { echo "== plain driver rc=$rc"; grep -E "^sanitizer_driver" "$WORK/plain.log"; } > "$OUT/sanitizer.log"
    # memcheck and racecheck side by side: each needs most of the stage's time.
    sanitize memcheck &
    mc=$!
    sanitize racecheck
    rc_rc=$?
    wait $mc
    rc_mc=$?
    cat "$WORK/memcheck.summary" "$WORK/racecheck.summary" >> "$OUT/sanitizer.log"
    cat "$OUT/sanitizer.log"
    ((rc == 0 && rc_mc == 0 && rc_rc == 0))
}

stage_gpu_probes() {
    run_pytest -m gpu tests/gpu/test_gpu_determinism.py tests/gpu/test_gpu_huge.py \
        tests/gpu/test_gpu_memory.py tests/gpu/test_gpu_compile.py
}

stage_core_tests() {
    # Triton compiles one kernel per test variant: spread the compiles over processes where xdist is there.
    local parallel=()
    "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 8)
    run_pytest -m gpu -x "${parallel[@]}" tests --ignore=tests/gpu
}

export -f run_pytest stage_install stage_env stage_gpu_equiv stage_bench stage_device_time stage_host_time \
    sanitizer_bin sanitize \
    stage_sanitizer \
    stage_gpu_probes stage_core_tests

selected() {
    [[ $GPU_RUN_STAGES == all || ",$GPU_RUN_STAGES," == *",$1,"* ]]
}

total=0
for s in "${STAGES[@]}"; do
    IFS='|' read -r name budget _ <<< "$s"
    selected "$name" && total=$((total + budget))
done

if ((DRY)); then
    echo "gpu_run.sh --dry-run: $OUT would receive the results; nothing is executed."
    printf '  %-11s %7s  %s\n' stage budget "what it runs"
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name budget what <<< "$s"
        selected "$name" || what="(not selected by GPU_RUN_STAGES) $what"
        printf '  %-11s %6ss  %s\n' "$name" "$budget" "$what"
    done
    echo "  total budget ${total}s (limit 300s)"
    ((total <= 300)) || { echo "ERROR: stage budgets exceed 300 s" >&2; exit 1; }
    exit 0
fi

mkdir -p "$OUT" "$WORK"
: > "$OUT/tests.log"
declare -A RC SECS
t_start=$SECONDS
for s in "${STAGES[@]}"; do
    IFS='|' read -r name budget what <<< "$s"
    selected "$name" || continue
    echo "===== $name (budget ${budget}s): $what"
    t0=$SECONDS
    case $name in
        install | gpu_equiv | gpu_probes | core_tests)
            { echo "===== $name"; timeout -k 5 "$budget" bash -c "stage_$name"; } > "$WORK/$name.log" 2>&1
            RC[$name]=$?
            cat "$WORK/$name.log" >> "$OUT/tests.log"
            tail -n 15 "$WORK/$name.log"
            ;;
        *)
            timeout -k 5 "$budget" bash -c "stage_$name"
            RC[$name]=$?
            ;;
    esac
    SECS[$name]=$((SECONDS - t0))
done

echo
echo "================ gpu_run summary: $OUT ($((SECONDS - t_start)) s of ${total} s budgeted) ================"
grep -E -m2 '^(device|python) ' "$OUT/env.txt" 2>/dev/null
printf '%-11s %5s %12s  %s\n' stage rc "time/budget" result
for s in "${STAGES[@]}"; do
    IFS='|' read -r name budget _ <<< "$s"
    selected "$name" || continue
    rc=${RC[$name]}
    note=""
    [[ $rc == 124 || $rc == 137 ]] && note="TIMED OUT "
    log="$WORK/$name.log"
    [[ $name == bench ]] && log="$OUT/bench.log"
    [[ -f $log ]] && note+=$(grep -E "[0-9]+ (passed|failed|skipped|deselected|errors?) " "$log" | tail -n 1)
    printf '%-11s %5s %6s/%-5s  %s\n' "$name" "$rc" "${SECS[$name]}s" "${budget}s" "$note"
done
echo "--- failures (tests.log)"
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -n 15
echo "--- sanitizer"
grep -E "^== |SUMMARY|^sanitizer_driver|^cases done" "$OUT/sanitizer.log" 2>/dev/null
echo "--- GPU checks (gpu_checks.json)"
[[ -f $OUT/gpu_checks.json ]] && "$PY" - "$OUT/gpu_checks.json" <<'PYEOF'
import json, sys
checks = json.load(open(sys.argv[1]))["checks"]
eq = {k: v for k, v in checks.items() if k.startswith("equivalence/")}
if eq:
    worst = {}
    for v in eq.values():
        for name, err in v["rel_err"].items():
            worst[name] = max(worst.get(name, 0.0), err)
    print(f"equivalence: {len(eq)} cases, worst rel err " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
for k, v in checks.items():
    if not k.startswith("equivalence/"):
        print(f"{k}: {json.dumps(v, separators=(',', ':'))[:300]}")
PYEOF
echo "--- device time (device-time.json: % of copy bandwidth, graph / events) and host time (host-time.json)"
"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
path = os.path.join(out, "device-time.json")
if os.path.exists(path):
    for r in json.load(open(path))["records"]:
        if "shape" in r:
            cells = " / ".join(f"{r[k]:.1f}" for k in ("pct_copy_graph", "pct_copy_events") if k in r)
            print(f"{r['case']:<20} {r['layout']:<13} {str(r['shape']):<18} {cells}")
path = os.path.join(out, "host-time.json")
if os.path.exists(path):
    rows = {}
    for r in json.load(open(path))["records"]:
        rows.setdefault((r["path"], r["stub_kernels"]), []).append(f"{r['host_us']:.1f}")
    for (name, stub), us in rows.items():
        print(f"host {name:<15} {'no-op' if stub else 'real':<5} kernels: {' / '.join(us)} µs (nchw / cl)")
PYEOF
echo "--- goals (from the benchmark file)"
bench_json=$("$PY" -c "import sys; from benchmarks.results import newest; print(newest(sys.argv[1]))" "$OUT" 2>/dev/null)
[[ -n $bench_json ]] && "$PY" -m benchmarks.report --results "$bench_json" --summary
echo "--- files"
ls -la "$OUT"
rm -rf "$WORK"
