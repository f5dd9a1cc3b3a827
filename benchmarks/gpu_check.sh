#!/usr/bin/env bash
# One-shot GPU verification of attnbench on a machine with one GPU (≤ 4 minutes).
#
#   benchmarks/gpu_check.sh [OUTDIR]        # default ./gpu-check; PYTHON=... to pick the interpreter
#
# Writes OUTDIR/summary.txt (one line per check: PASS|FAIL|SKIP <name>: <detail>, also printed)
# and OUTDIR/*.log. Exit 1 if any check FAILs, else 0; 2 if attnbench is not importable.
# Installs nothing. Without CUDA every GPU check says SKIP with the reason.
set -u
OUT="${1:-./gpu-check}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"  # relative to where it was called from
cd "$(dirname "$0")/.."  # repository root: the checks import harness/ and implementations/ from here
export GPU_CHECK_DEADLINE=$(( $(date +%s) + 225 ))  # the sweep (last) stops starting work after this
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # Triton kernels must be compiled for the GPU, not interpreted
T0=$SECONDS

line() { echo "$1" | tee -a "$SUMMARY"; }

if ! "$PY" -c "import harness.cli.main, torch" > "$OUT/import.log" 2>&1; then
    line "FAIL import: attnbench is not importable with $PY (see $OUT/import.log); install it first, e.g. pip install -e '.[test,triton]'"
    exit 2
fi
run_check() {  # CHECK: benchmarks/gpu_check_kernels.py CHECK, its lines into the summary
    local out rc left=$(( GPU_CHECK_DEADLINE + 10 - $(date +%s) ))
    if [ "$left" -lt 5 ]; then line "FAIL $1: not run: the 4-minute budget is used up"; return; fi
    out="$(timeout "$left" "$PY" benchmarks/gpu_check_kernels.py "$1" "$OUT" 2> "$OUT/$1.log")"
    rc=$?
    [ -n "$out" ] && line "$out"
    if [ "$rc" -ne 0 ] && ! grep -q "^FAIL" <<< "$out"; then
        line "FAIL $1: exit $rc without a verdict (see $OUT/$1.log)"
    fi
}

CUDA="$("$PY" -c "import torch; print('yes' if torch.cuda.is_available() else 'no CUDA device (torch ' + torch.__version__ + ', CUDA build ' + str(torch.version.cuda) + ')')" 2>>"$OUT/import.log")"
line "INFO python: $PY; cuda: $CUDA; $(date -u +%FT%TZ); $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"

run_check list  # attnbench list (python -m harness.cli.main list), table in list.log

# the tests that need CUDA (they skip with reason "needs CUDA..." elsewhere)
if [ "$CUDA" != yes ]; then
    line "SKIP cuda_tests: $CUDA"
else
    timeout 90 "$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda or real_nvml or real_gpu" tests > "$OUT/cuda_tests.log" 2>&1
    rc=$?
    res="$(tail -n 1 "$OUT/cuda_tests.log")"
    if [ $rc -eq 0 ] && ! grep -q "needs CUDA" "$OUT/cuda_tests.log"; then line "PASS cuda_tests: $res"
    else line "FAIL cuda_tests: exit $rc: $res (see $OUT/cuda_tests.log)"
    fi
fi

# per-check Python (benchmarks/gpu_check_kernels.py): one line each, the sweep one per
# scenario and timing one per mode; the sweep runs last and stops at GPU_CHECK_DEADLINE
for check in kernels timing memory telemetry sweep; do run_check "$check"; done

FAILS=$(grep -c '^FAIL' "$SUMMARY")
line "INFO done in $((SECONDS - T0)) s: $(grep -c '^PASS' "$SUMMARY") pass, $FAILS fail, $(grep -c '^SKIP' "$SUMMARY") skip; summary $SUMMARY"
[ "$FAILS" -eq 0 ]
