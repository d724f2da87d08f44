#!/usr/bin/env bash
# The GPU call: the whole module's correctness first (CUDA graphs of it included), then its timings
# (eager, compiled, reduce-overhead) and host time; the gate's timings when named.
#
#   bash benchmarks/gpu_run.sh OUTDIR            # on a bare CUDA machine (timeout_s 480 leaves room)
#   bash benchmarks/gpu_run.sh --dry-run OUTDIR  # the plan: stages, budgets and their basis, files; runs nothing
#   GPU_RUN_STAGES=sanitizer,bench_gate ...      # a subset, run in the table's order ("all": the default set;
#                                                # bench_gate and gpu_probes run only when named)
#   GPU_RUN_TESTS="tests/a.py::t[x] ..."         # the test stages run only these node ids where they hold any
#   BENCH_PYTEST_ARGS="--quick -k gate_fwd-bf16" # added to the bench stages' pytest (a -k replaces their own)
#   GPU_RUN_LIMIT=180                            # seconds: a stage that could end past it is not started
#   GPU_RUN_BUDGETS=sanitizer:60,env:3           # override budgets (trims, tests)
#   GPU_RUN_SLEEP=env:30                         # test hook: the stage sleeps 30 s after its work
# benchmarks/gpu_rerun.sh reruns what a previous run's summary.txt marks failed (≤ 3 minutes).
#
# Each stage runs under its own `timeout` (then SIGKILL after GRACE s), which ends the stage's
# whole process group. Its output goes straight into its log file in OUTDIR, opened by this
# shell, so a stage killed by its timeout keeps what it printed; files a stage writes beside it
# (the two sanitizer logs) go to its scratch folder and are appended by this shell afterwards.
# Result files are rewritten after every record (bench.json, host-time.json, gpu_checks.json)
# and summary.txt after every stage. The budgets, with each stage's kill grace and the summary,
# add up to at most GPU_RUN_LIMIT (360 s); the basis of each is written beside it: measured
# stage times of runs 1-2 (tests/gpu/results), kernel variants counted on CPU by
# `PYTHONPATH=tests/gpu pytest -p gpu_common ...` under the interpreter, and estimates where
# nothing was measured (each says so). On the GPU each pytest stage prints the kernels Triton
# compiled and the seconds that took, the check on these figures.
# OUTDIR receives at most 8 files (the device tool returns 8): FILES below. The last thing
# printed is the summary, correctness first (the device tool returns only the output's tail).
# perf.md and perf.png are rendered from bench.json afterwards, on any machine:
#   python -m benchmarks.report --results OUTDIR/bench.json --out-md perf.md --out-png perf.png
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
GPU_RUN_STAGES=${GPU_RUN_STAGES:-all}
GPU_RUN_LIMIT=${GPU_RUN_LIMIT:-360}
GPU_RUN_BUDGETS=${GPU_RUN_BUDGETS:-}
GPU_RUN_SLEEP=${GPU_RUN_SLEEP:-}
export GPU_RUN_TESTS=${GPU_RUN_TESTS:-}
export BENCH_PYTEST_ARGS=${BENCH_PYTEST_ARGS:-}
GRACE=2      # s between a stage's SIGTERM and SIGKILL
SUMMARY_S=8  # s for the summary (report rendering, gpu_checks.json): counted in the worst case

# A gate-kernel compile took ~0.2 s on the H200 host: runs 1-2 ran 34 gate tests (84 variants,
# CPU count) in 16-18 s of pytest, and the sanitizer driver's 29 gate cases (59) in 10.6-12.0 s.
# The module's kernels (tl.dot, loops over channels) have not been compiled on a GPU host:
# ~0.6 s each is assumed until a run prints its own figure.
#
# name|budget s|kind|log|what it runs|basis of the budget
# kind: setup, check (correctness: all before any timing), time; optional: only when named.
STAGES=(
    "install|8|setup|tests.log|pip install --no-deps --no-build-isolation -e .|3 s in runs 1 and 2"
    "env|8|setup|env.txt|nvidia-smi, torch/triton/CUDA/driver versions, compute-sanitizer, git|4 s in run 1; a 5 s guard cut run 2's"
    "module_tests|50|check|tests.log|pytest -m gpu tests/test_fused_module.py (xdist -n 8): FusedBAM vs eager, fp64/fp32/bf16/fp16/autocast, gradcheck, BN options, fallbacks|51 tests, 142 kernel variants (CPU count): 53 gate x 0.2 s + 89 module x 0.6 s = 64 s of compiles, ~16 s over 8 workers with repeats; ~10 s worker start; tests ~5 s"
    "sanitizer|45|check|sanitizer.log|sanitizer_driver.py plain (compiles, checks vs float64: FusedBAM step per variant first, then the gate), then compute-sanitizer memcheck and racecheck side by side from Triton's cache|plain (guard: budget - 19 s): 73 variants (CPU count) = 64 gate x 0.2 s + 9 module x 0.6 s = 18 s + ~5 s start; sanitized, side by side: 6-9 s of driver + ~6 s start in runs 1-2 (29 cases; now 31) + 2 fp64 module steps"
    "gpu_equiv|20|check|tests.log|pytest -m gpu tests/gpu/test_gpu_equivalence.py (xdist -n 4): gate kernels vs float64, all modes/dtypes/layouts/odd maps|38 tests, 99 variants (CPU count); 34 of them took 16-18 s of pytest in runs 1-2, ~5 s over 4 workers + ~8 s start"
    "cuda_graphs|40|check|tests.log|pytest -m gpu tests/gpu/test_gpu_cuda_graphs.py (no xdist): make_graphed_callables on FusedBAM, a captured ResNet-18+BAM training step, reduce-overhead FusedBAM; 3 replayed steps each vs eager in fp64|estimate, never run: fp64 module kernels at 4 shapes, ~32 variants x 0.6 s = 19 s; torch.compile of one FusedBAM ~5 s; ResNet-18 warm-up and capture ~3 s; ~8 s start"
    "bench_resnet|97|time|bench.log|ResNet-50 step, 7 providers (none, released, eager, fused, compiled, fused_compiled, fused_reduce_overhead): 50 interleaved steps each, 20 graph replays (not reduce-overhead's), profiler -> bench.json|estimate: cold torch.compile of 3 BAMs fwd+bwd ~3 x 15 s (not timed alone: run 1's whole bench, these included, took 102 s); 5 x 73 steps x 16-29 ms (runs 2-3) = 9 s; 5 models, graph captures, ~8 s start (85 s); FusedBAM compiled twice (its ops only, never timed) ~6 x 2 s"
    "bench_module|50|time|bench.log|BAM module fwd+bwd at the ResNet-50 shapes (bf16 autocast, channels_last), released/eager/fused/compiled/fused_compiled/fused_reduce_overhead, wall + graph + profiler -> bench.json|estimate: compiled BAMs from bench_resnet's inductor cache ~3 x 3 s; fused: ~14 module variants x 0.6 s; 3 cases x 4 providers x ~0.5 s of timing; ~8 s start (40 s); FusedBAM compiled twice a shape from the cache ~6 x 1.5 s"
    "host_time|16|time|bench.log|python -m benchmarks.host_time --budget-s <budget - 6>: host us per call of the module and the gate paths, real and no-op kernels -> host-time.json|calls sized to --budget-s 10 (of 16), compiles inside it (~20 variants: gate and module kernels, 2 layouts); ~5 s start"
    "bench_gate|50|optional|bench.log|gate fwd/bwd/fwd+bwd, bf16, ResNet-50 shapes, both layouts, released/eager_paper/fused/compiled, wall + graph -> bench.json|estimate: 18 cases; torch.compile of 3 ops x 2 layouts, static then dynamic shapes, ~12 x 2 s; fused ~20 variants x 0.2 s; ~1 s of timing a case; ~6 s start. Optional since the module's stages joined: the gate alone was timed in runs 1-3"
    "gpu_probes|28|optional|tests.log|pytest -m gpu: determinism (20 runs), >2^31 elements, saved bytes + ResNet peak, torch.compile|28 s in run 2 (9 tests)"
)
# Everything OUTDIR receives.
FILES=(summary.txt env.txt tests.log sanitizer.log bench.json bench.log host-time.json gpu_checks.json)

field() {  # field N of stage line $1 (1-based)
    cut -d'|' -f"$2" <<< "$1"
}

budget_of() {  # a stage's budget, GPU_RUN_BUDGETS first
    local name=$1 default=$2 kv
    for kv in ${GPU_RUN_BUDGETS//,/ }; do
        [[ ${kv%%:*} == "$name" ]] && { echo "${kv#*:}"; return; }
    done
    echo "$default"
}

selected() {  # name kind
    if [[ $GPU_RUN_STAGES == all ]]; then
        [[ $2 != optional ]]
    else
        [[ ",$GPU_RUN_STAGES," == *",$1,"* ]]
    fi
}

run_pytest() {
    "$PY" -m pytest -p no:cacheprovider --tb=short -ra "$@"
}

xdist() {  # -n N where pytest-xdist is installed (the GPU image has it)
    "$PY" -c "import xdist" 2> /dev/null && echo "-n $1"
}

test_stage() {  # xdist workers, then the stage's files: only GPU_RUN_TESTS' ids among them, if any
    local workers=$1 id ids=() wanted
    shift
    read -ra wanted <<< "$GPU_RUN_TESTS"  # node ids hold [...]: no glob expansion
    for id in "${wanted[@]}"; do
        for f in "$@"; do [[ $id == "$f"::* ]] && ids+=("$id"); done
    done
    ((${#ids[@]})) || ids=("$@")
    # -v: one line per test, so a stage cut off by its time guard shows what passed.
    # shellcheck disable=SC2046  # xdist's output is two words or none
    PYTHONPATH="$ROOT/tests/gpu" run_pytest -v -p gpu_common --durations=8 -m gpu $(xdist "$workers") "${ids[@]}"
}

stage_install() {
    "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
}

sanitizer_bin() {
    local installed=(/usr/local/cuda*/bin/compute-sanitizer)
    command -v compute-sanitizer || { [[ -x ${installed[0]} ]] && echo "${installed[0]}"; } || echo compute-sanitizer
}

stage_env() {  # line by line into env.txt: a guard that cuts it keeps what came before
    echo "date: $(date -Is)"
    echo "host: $(uname -a)"
    echo "git: $(git -C "$ROOT" rev-parse HEAD 2> /dev/null || echo 'not a git checkout')"
    echo "compute-sanitizer: $(sanitizer_bin) $("$(sanitizer_bin)" --version 2> /dev/null | tail -n 1)"
    "$PY" - << 'PYEOF' || return
import platform, torch, triton
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__} "
      f"cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}", flush=True)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name} sm {p.major}.{p.minor} SMs {p.multi_processor_count} "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB memory {p.total_memory / 2**30:.1f} GiB")
else:
    print("device none: no CUDA device")
PYEOF
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
            --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
}

stage_module_tests() { test_stage 8 tests/test_fused_module.py; }
stage_gpu_equiv() { test_stage 4 tests/gpu/test_gpu_equivalence.py; }
stage_cuda_graphs() { test_stage 0 tests/gpu/test_gpu_cuda_graphs.py; }  # one GPU, graphs captured in turn
stage_gpu_probes() {  # no xdist: the huge and memory probes each want the whole GPU
    test_stage 0 tests/gpu/test_gpu_determinism.py tests/gpu/test_gpu_huge.py tests/gpu/test_gpu_memory.py \
        tests/gpu/test_gpu_compile.py
}

stage_sanitizer() {
    local rc=0 rc_mc rc_rc mc cs left
    cs=$(sanitizer_bin)
    # A plain run first: it compiles every variant into Triton's disk cache, from which the
    # sanitized runs load them (a cold compile under the sanitizer can take the whole budget).
    # It may take all but the ~19 s the sanitized runs need (basis in STAGES). --foreground keeps
    # the driver in the stage's process group, which the stage's guard ends.
    timeout --foreground $((STAGE_BUDGET - 19)) "$PY" tests/gpu/sanitizer_driver.py || rc=$?
    echo "== plain driver rc=$rc"
    command -v "$cs" > /dev/null || { echo "== compute-sanitizer not found"; return 127; }
    left=$((STAGE_END - $(date +%s)))
    echo "== memcheck and racecheck side by side, ${left} s left (logs appended below when the stage ends)"
    # No caching allocator: every tensor is its own allocation, so memcheck sees overruns. A finding
    # exits 3 (by default the sanitizer exits with the program's status, findings or not).
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 3 --print-limit 20 \
        "$PY" tests/gpu/sanitizer_driver.py > "$STAGE_DIR/memcheck.log" 2>&1 &
    mc=$!
    "$cs" --tool racecheck --error-exitcode 3 --print-limit 20 "$PY" tests/gpu/sanitizer_driver.py \
        > "$STAGE_DIR/racecheck.log" 2>&1
    rc_rc=$?
    wait $mc
    rc_mc=$?
    echo "== memcheck rc=$rc_mc"
    echo "== racecheck rc=$rc_rc"
    ((rc == 0 && rc_mc == 0 && rc_rc == 0))
}

bench() {  # level, then its default pytest selection: records appended to bench.json
    local level=$1
    shift
    # shellcheck disable=SC2086  # BENCH_PYTEST_ARGS is a list of words
    PYTHONPATH="$ROOT/tests/gpu" run_pytest -q -p gpu_common "benchmarks/test_bench_$level.py" \
        --results-file "$OUT/bench.json" "$@" $BENCH_PYTEST_ARGS
}

RESNET50_IDS="64x256x56x56 or 64x512x28x28 or 64x1024x14x14"
stage_bench_resnet() { bench resnet; }
stage_bench_module() { bench module -k "$RESNET50_IDS"; }
stage_bench_gate() { bench gate -k "bf16 and ($RESNET50_IDS)"; }

stage_host_time() {
    "$PY" -m benchmarks.host_time --budget-s $((STAGE_BUDGET - 6)) --out "$OUT/host-time.json"
}

export -f run_pytest xdist test_stage sanitizer_bin bench stage_install stage_env stage_module_tests \
    stage_gpu_equiv stage_cuda_graphs stage_gpu_probes stage_sanitizer stage_bench_resnet stage_bench_module \
    stage_bench_gate stage_host_time
export RESNET50_IDS

# The plan: selected stages with their budgets.
PLAN=()
total=0
for s in "${STAGES[@]}"; do
    name=$(field "$s" 1)
    selected "$name" "$(field "$s" 3)" || continue
    budget=$(budget_of "$name" "$(field "$s" 2)")
    PLAN+=("$name|$budget|$(field "$s" 3)|$(field "$s" 4)|$(field "$s" 5)|$(field "$s" 6)")
    total=$((total + budget))
done
worst=$((total + ${#PLAN[@]} * GRACE + SUMMARY_S))

if ((DRY)); then
    echo "gpu_run.sh --dry-run: the plan for $OUT; nothing is executed."
    printf '  %-2s %-13s %-6s %6s %9s  %-14s %s\n' "#" stage kind budget "ends by" log "what it runs"
    t=0 i=0 fits=1
    for p in "${PLAN[@]}"; do
        IFS='|' read -r name budget kind log what basis <<< "$p"
        t=$((t + budget + GRACE)) i=$((i + 1))
        late=""
        ((t + SUMMARY_S > GPU_RUN_LIMIT)) && late="NOT STARTED (would end past ${GPU_RUN_LIMIT}s): " fits=0
        printf '  %-2s %-13s %-6s %5ss %8ss  %-14s %s\n' "$i" "$name" "$kind" "$budget" "$t" "$log" "$late$what"
        printf '  %-2s %-13s basis: %s\n' "" "" "$basis"
    done
    skipped=""
    for s in "${STAGES[@]}"; do
        name=$(field "$s" 1)
        selected "$name" "$(field "$s" 3)" || skipped+=" $name ($(field "$s" 3), $(field "$s" 2)s)"
    done
    [[ -n $skipped ]] && echo "  not selected:$skipped"
    [[ -n $GPU_RUN_TESTS ]] && echo "  test stages run only these of their tests: $GPU_RUN_TESTS"
    echo "  total budget ${total}s; worst case ${worst}s with ${GRACE}s kill grace per stage and ${SUMMARY_S}s of summary (limit ${GPU_RUN_LIMIT}s)"
    echo "  files (${#FILES[@]}, limit 8): ${FILES[*]}"
    ((fits)) || { echo "ERROR: the worst case exceeds ${GPU_RUN_LIMIT} s: the stages marked would not start" >&2; exit 1; }
    ((${#FILES[@]} <= 8)) || { echo "ERROR: more than 8 files" >&2; exit 1; }
    exit 0
fi

mkdir -p "$OUT" "$WORK"
declare -A RC SECS STATUS
t_start=$SECONDS

stage_lines() {  # the machine-readable lines of summary.txt (gpu_rerun.sh reads them)
    local p name budget
    for p in "${PLAN[@]}"; do
        IFS='|' read -r name budget _ <<< "$p"
        [[ -n ${STATUS[$name]:-} ]] || continue
        printf 'stage %-13s %-9s rc=%-4s %4ss/%-4s %s\n' "$name" "${STATUS[$name]}" "${RC[$name]}" \
            "${SECS[$name]}" "${budget}s" "$(stage_result "$name")"
    done
    for p in "${PLAN[@]}"; do
        IFS='|' read -r name _ <<< "$p"
        [[ ${STATUS[$name]:-} == FAILED && -f $WORK/$name.out ]] || continue
        grep -oE "^FAILED [^ ]+|^ERROR [^ ]+::[^ ]+" "$WORK/$name.out" | awk -v s="$name" '{print "failed " s " " $2}'
    done
}

variants() {  # the kernel-variant lines of a stage's output, short
    grep -hE "^kernel variants:" "$1" | sed -E 's/^kernel variants: / | variants: /; s/ \(.*//'
}

stage_result() {  # one line: what the stage's own output says of it
    local out="$WORK/$1.out" line
    [[ -f $out ]] || return 0
    case $1 in
        sanitizer)
            line="$(grep -hE "^sanitizer_driver:" "$out" | head -n 1)$(variants "$out" | head -n 1)"
            for tool in memcheck racecheck; do
                line+=" | $tool: $(grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$WORK/sanitizer/$tool.log" 2> /dev/null \
                    | sed 's/^=* *//' | tail -n 1)"
            done
            echo "$line"
            ;;
        env) grep -hE "^device " "$out" | head -n 1 ;;
        host_time) grep -hE "^host_time:" "$out" | tail -n 1 ;;
        *)
            line=$(grep -hE "^=* ?[0-9]+ (passed|failed|error|errors|skipped|deselected)|^=* ?no tests ran" "$out" \
                | tail -n 1 | tr -d '=')
            echo "$line$(variants "$out" | tail -n 1)"
            ;;
    esac
}

for p in "${PLAN[@]}"; do
    IFS='|' read -r name budget kind log _ <<< "$p"
    elapsed=$((SECONDS - t_start))
    if ((elapsed + budget + GRACE + SUMMARY_S > GPU_RUN_LIMIT)); then
        STATUS[$name]=NOT_RUN RC[$name]=- SECS[$name]=0
        echo "===== $name: not started, ${elapsed}s + ${budget}s would pass the ${GPU_RUN_LIMIT}s limit"
        stage_lines > "$OUT/summary.txt"
        continue
    fi
    echo "===== $name ($kind, budget ${budget}s) -> $log"
    logf="$OUT/$log"
    touch "$logf"
    offset=$(stat -c %s "$logf")
    echo "===== $name (budget ${budget}s) $(date -u +%T)" >> "$logf"
    mkdir -p "$WORK/$name"
    sleep_s=0
    for kv in ${GPU_RUN_SLEEP//,/ }; do [[ ${kv%%:*} == "$name" ]] && sleep_s=${kv#*:}; done
    t0=$SECONDS
    # The stage's output goes straight into its log, opened here: what it printed survives its guard.
    # shellcheck disable=SC2016  # $rc and $SLEEP_S expand in the stage's shell
    STAGE_DIR="$WORK/$name" STAGE_BUDGET=$budget STAGE_END=$(($(date +%s) + budget)) SLEEP_S=$sleep_s \
        timeout -k "$GRACE" "$budget" bash -c 'set -o pipefail; stage_'"$name"'; rc=$?
            ((SLEEP_S)) && echo "GPU_RUN_SLEEP: stage_'"$name"' returned $rc, sleeping ${SLEEP_S}s" && sleep "$SLEEP_S"
            exit $rc' >> "$logf" 2>&1
    rc=$?
    SECS[$name]=$((SECONDS - t0))
    RC[$name]=$rc
    # Files the stage wrote beside its log: appended here, after the stage, whether it ended or was ended.
    for f in "$WORK/$name"/*.log; do
        [[ -f $f ]] && { echo "----- $name: $(basename "$f")"; cat "$f"; } >> "$logf"
    done
    case $rc in
        0) STATUS[$name]=ok ;;
        124 | 137) STATUS[$name]=TIMEOUT ;;
        *) STATUS[$name]=FAILED ;;
    esac
    echo "===== $name ${STATUS[$name]} rc=$rc ${SECS[$name]}s of ${budget}s" >> "$logf"
    tail -c +$((offset + 1)) "$logf" > "$WORK/$name.out"
    echo "      ${STATUS[$name]} rc=$rc ${SECS[$name]}s/${budget}s $(stage_result "$name")"
    stage_lines > "$OUT/summary.txt"
done

summary() {
    echo "================ gpu_run summary: $OUT, $((SECONDS - t_start)) s of ${total} s budgeted ================"
    grep -hE '^(device|python) ' "$OUT/env.txt" 2> /dev/null
    echo "--- stages: status, rc, time/budget, result (correctness first)"
    stage_lines
    echo "--- correctness: failures (tests.log, sanitizer.log)"
    grep -hE "^(FAILED|ERROR) " "$OUT/tests.log" 2> /dev/null | cut -c1-300 | head -n 15
    grep -hE "MISMATCH|Invalid|Race reported|hazard|ERROR SUMMARY: [1-9]" "$OUT/sanitizer.log" 2> /dev/null \
        | cut -c1-300 | head -n 10
    if [[ -f $OUT/gpu_checks.json ]]; then
        echo "--- correctness: GPU checks (gpu_checks.json)"
        "$PY" - "$OUT/gpu_checks.json" << 'PYEOF'
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
        print(f"{k}: {json.dumps(v, separators=(',', ':'))[:200]}")
PYEOF
    fi
    if [[ -f $OUT/bench.json ]]; then
        echo "--- timings: goals and the ResNet step (bench.json)"
        "$PY" -m benchmarks.report --results "$OUT/bench.json" --summary 2>&1 | head -n 60
    fi
    if [[ -f $OUT/host-time.json ]]; then
        echo "--- host time (host-time.json), µs per call, nchw / channels_last"
        "$PY" - "$OUT/host-time.json" << 'PYEOF'
import json, sys
rows = {}
for r in json.load(open(sys.argv[1]))["records"]:
    rows.setdefault((r["path"], r["stub_kernels"]), []).append(f"{r['host_us']:.1f}")
for (name, stub), us in rows.items():
    print(f"{name:<15} {'no-op' if stub else 'real':<5} kernels: {' / '.join(us)}")
PYEOF
    fi
    echo "--- files (bytes)"
    find "$OUT" -type f -printf '%10s  %P\n' | sort -k2
}

summary > "$WORK/summary.txt" 2>&1
cp "$WORK/summary.txt" "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
rm -rf "$WORK"
