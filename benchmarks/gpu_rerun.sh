#!/usr/bin/env bash
# The second GPU call (at most 3 minutes): only what failed in a previous gpu_run.sh, or what a
# fix made on CPU since then changed.
#
#   bash benchmarks/gpu_rerun.sh [--dry-run] [--from SUMMARY] [--stages a,b] OUTDIR
#
#   --from SUMMARY  a previous run's summary.txt, copied into the checkout so that it travels
#                   (e.g. tests/gpu/results/run4/summary.txt): every stage it marks FAILED,
#                   TIMEOUT or NOT_RUN runs again; a FAILED test stage runs only the tests it
#                   lists as failed (its `failed STAGE NODEID` lines)
#   --stages a,b    these stages too, whole (what a CPU fix changed)
#
# install and env always come first (each call gets a bare machine). The stages keep
# gpu_run.sh's order, budgets and files; GPU_RUN_LIMIT is 180 s (override it in the
# environment), and a stage that could end past it is not started and is marked NOT_RUN in the
# new summary.txt, ready for the next --from.
set -uo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_rerun.sh [--dry-run] [--from SUMMARY] [--stages a,b] OUTDIR" >&2
    exit 2
}

DRY=()
FROM=""
NAMED=""
while (($#)); do
    case $1 in
        --dry-run) DRY=(--dry-run) ;;
        --from) FROM=${2:-} && shift ;;
        --stages) NAMED=${2:-} && shift ;;
        -*) usage ;;
        *) break ;;
    esac
    shift
done
(($# == 1)) || usage
[[ -n $FROM || -n $NAMED ]] || usage
[[ -z $FROM || -f $FROM ]] || { echo "gpu_rerun.sh: no summary file $FROM" >&2; exit 2; }

stages=",install,env,"
add() { [[ $stages == *",$1,"* ]] || stages+="$1,"; }
for name in ${NAMED//,/ }; do add "$name"; done
tests=()
if [[ -n $FROM ]]; then
    while read -r _ name status _; do
        case $status in FAILED | TIMEOUT | NOT_RUN) add "$name" ;; esac
    done < <(grep -E '^stage ' "$FROM")
    # A failed test of a stage not named whole: that test alone.
    while read -r _ name id; do
        [[ ",$NAMED," == *",$name,"* ]] || tests+=("$id")
    done < <(grep -E '^failed ' "$FROM")
fi
stages=${stages#,}
if [[ $stages == install,env, ]]; then
    echo "gpu_rerun.sh: nothing failed in $FROM and no stage named: nothing to rerun."
    exit 0
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
GPU_RUN_STAGES=${stages%,} GPU_RUN_TESTS="${tests[*]}" GPU_RUN_LIMIT=${GPU_RUN_LIMIT:-180} \
    exec bash benchmarks/gpu_run.sh "${DRY[@]}" "$1"
