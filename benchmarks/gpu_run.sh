#!/usr/bin/env bash
# The one GPU call: install, record the environment, benchmark, prove the kernels.
#
#   bash benchmarks/gpu_run.sh OUTDIR            # on a bare CUDA machine, from the repo root
#   bash benchmarks/gpu_run.sh --dry-run OUTDIR  # list the stages, budgets and files; runs nothing
#   GPU_RUN_STAGES=bench_resnet,bench_gate bash benchmarks/gpu_run.sh OUTDIR   # a subset (reruns)
#   BENCH_PYTEST_ARGS="--quick -k gate_fwd-bf16" ...   # extra arguments of the bench stages' pytest
#
# Every stage runs under its own `timeout`, and the budgets add up to under 5 minutes, so a
# stage that overruns loses only its own tail: the result files are rewritten after every
# record. Stages run in priority order, the goal data first: the ResNet-50 step, the module and
# the gate (each in wall time, CUDA-graph device time and, for the first two, a profiler pass),
# then correctness (equivalence, sanitizer, probes), which CPU CI covers through the interpreter.
# OUTDIR receives at most 8 files (the device tool returns 8); FILES below lists them.
# perf.md and perf.png are rendered from bench.json afterwards, on any machine:
#   python -m benchmarks.report --results OUTDIR/bench.json --out-md perf.md --out-png perf.png
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

# name | budget (s) | what it does. Order: the goal data first, then correctness.
STAGES=(
    "install|10|pip install --no-deps --no-build-isolation -e . (log: tests.log)"
    "env|8|nvidia-smi, torch/triton/CUDA/driver versions, compute-sanitizer version -> env.txt"
    "bench_resnet|80|ResNet-50 step, 5 providers interleaved (50 steps each), CUDA-graph step, profiler -> bench.json"
    "bench_module|40|BAM module fwd+bwd at the ResNet-50 shapes, 4 providers, wall + graph + profiler -> bench.json"
    "bench_gate|50|gate fwd/bwd/fwd+bwd, ResNet-50 shapes, both layouts, 4 providers, wall + graph -> bench.json"
    "gpu_equiv|28|pytest -m gpu tests/gpu/test_gpu_equivalence.py: kernels vs float64, all modes/dtypes/layouts/odd maps"
    "host_time|15|python -m benchmarks.host_time: host µs per call, real and no-op kernels -> host-time.json"
    "sanitizer|38|sanitizer_driver.py plain (warms the JIT cache), then compute-sanitizer memcheck and racecheck"
    "gpu_probes|28|pytest -m gpu tests/gpu: determinism (20 runs), >2^31 elements, saved bytes + ResNet peak, compile"
)
# Everything OUTDIR receives.
FILES=(env.txt tests.log bench.json bench.log host-time.json sanitizer.log gpu_checks.json)
BENCH_PYTEST_ARGS=${BENCH_PYTEST_ARGS:-}
export BENCH_PYTEST_ARGS

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

bench() {  # level: one benchmark file, its records appended to bench.json, its log to bench.log
    local rc
    # shellcheck disable=SC2086  # BENCH_PYTEST_ARGS is a list of words
    run_pytest "benchmarks/test_bench_$1.py" --results-file "$OUT/bench.json" $BENCH_PYTEST_ARGS \
        > "$WORK/bench_$1.log" 2>&1
    rc=$?
    { echo "===== bench_$1 rc=$rc"; cat "$WORK/bench_$1.log"; } >> "$OUT/bench.log"
    tail -n 8 "$WORK/bench_$1.log"
    return $rc
}

stage_bench_resnet() { bench resnet; }
stage_bench_module() { bench module; }
stage_bench_gate() { bench gate; }

stage_host_time() {
    "$PY" -m benchmarks.host_time --calls 100 --repeats 15 --out "$OUT/host-time.json"
}

sanitizer_bin() {
    local cs
    cs=$(command -v compute-sanitizer) || cs=$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    echo "${cs:-compute-sanitizer}"
}

sanitize() {  # tool: the driver under compute-sanitizer, full log in $WORK, summary lines kept
    local tool=$1 log="$WORK/$1.log" rc
    # No caching allocator: every tensor is its own allocation, so memcheck sees overruns.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 22 "$(sanitizer_bin)" --tool "$tool" --print-limit 20 \
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
    # Within the stage's budget: 14 s plain (12 s in run 2), then 22 s for the two tools side by side.
    timeout 14 "$PY" tests/gpu/sanitizer_driver.py > "$WORK/plain.log" 2>&1 || rc=$?
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

export -f run_pytest bench stage_install stage_env stage_bench_resnet stage_bench_module stage_bench_gate \
    stage_gpu_equiv stage_host_time sanitizer_bin sanitize stage_sanitizer stage_gpu_probes

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
    printf '  %-13s %7s  %s\n' stage budget "what it runs"
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name budget what <<< "$s"
        selected "$name" || what="(not selected by GPU_RUN_STAGES) $what"
        printf '  %-13s %6ss  %s\n' "$name" "$budget" "$what"
    done
    echo "  total budget ${total}s (limit 300s)"
    echo "  files (${#FILES[@]}, limit 8): ${FILES[*]}"
    ((total <= 300)) || { echo "ERROR: stage budgets exceed 300 s" >&2; exit 1; }
    ((${#FILES[@]} <= 8)) || { echo "ERROR: more than 8 files" >&2; exit 1; }
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
        install | gpu_equiv | gpu_probes)
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
printf '%-13s %5s %12s  %s\n' stage rc "time/budget" result
for s in "${STAGES[@]}"; do
    IFS='|' read -r name budget _ <<< "$s"
    selected "$name" || continue
    rc=${RC[$name]}
    note=""
    [[ $rc == 124 || $rc == 137 ]] && note="TIMED OUT "
    log="$WORK/$name.log"
    [[ -f $log ]] && note+=$(grep -E "[0-9]+ (passed|failed|skipped|deselected|errors?) " "$log" | tail -n 1)
    printf '%-13s %5s %6s/%-5s  %s\n' "$name" "$rc" "${SECS[$name]}s" "${budget}s" "$note"
done
echo "--- failures (tests.log, bench.log)"
grep -hE "^(FAILED|ERROR) " "$OUT/tests.log" "$OUT/bench.log" 2>/dev/null | head -n 15
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
echo "--- host time (host-time.json)"
"$PY" - "$OUT/host-time.json" <<'PYEOF'
import json, os, sys
if os.path.exists(sys.argv[1]):
    rows = {}
    for r in json.load(open(sys.argv[1]))["records"]:
        rows.setdefault((r["path"], r["stub_kernels"]), []).append(f"{r['host_us']:.1f}")
    for (name, stub), us in rows.items():
        print(f"host {name:<15} {'no-op' if stub else 'real':<5} kernels: {' / '.join(us)} µs (nchw / cl)")
PYEOF
echo "--- goals and the ResNet step (bench.json)"
[[ -f $OUT/bench.json ]] && "$PY" -m benchmarks.report --results "$OUT/bench.json" --summary
echo "--- files"
ls -la "$OUT"
rm -rf "$WORK"
