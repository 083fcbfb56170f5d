#!/usr/bin/env bash
# The one-call GPU check: install the carried wheels, then benchmarks/device_check.py (versions, then
# gpu_bench stages in order of value) within BUDGET_S seconds of wall time in all. Results in $OUT:
# device_check.json (everything, raw gpu_bench rows included), device_check.md (the table),
# device_check.log (this whole output), pip_list.txt (the machine's packages as imported).
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repo root (see DEVICE_CHECK.md)
#
# Environment: OUT (results folder; default ./device-out), BUDGET_S (default 450), SITE (install
# target; default /tmp/papo/site-packages), WHEELS (default .device/wheels), PYTHON (default python3),
# SKIP_INSTALL=1 (use the packages as they are). Extra arguments go to device_check.py (--stages 3b,
# --tiny).
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
BUDGET_S=${BUDGET_S:-450}
# The folder's name must hold "site-packages": dill (datasets' fingerprints) pickles modules from other
# folders outside sys.prefix by value, which failed on a pyarrow type (seen on the CPU, /tmp/simsite).
SITE=${SITE:-/tmp/papo/site-packages}
WHEELS=${WHEELS:-.device/wheels}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

main() {
    echo "device_check.sh: $(date -u +%FT%TZ) on $(hostname); budget ${BUDGET_S} s; $($PYTHON --version 2>&1)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    if [ "${SKIP_INSTALL:-0}" != 1 ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE"
        $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl || { echo "device_check.sh: wheel install FAILED"; return 3; }
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "device_check.sh: no carried wheels installed (SKIP_INSTALL=${SKIP_INSTALL:-0}; $WHEELS empty?)"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    PYTHONPATH="$PYTHONPATH" $PYTHON -m pip list 2>/dev/null >"$OUT/pip_list.txt" || true
    # nothing can be downloaded there: fail fast instead of waiting on the network
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
    export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
    local left=$((BUDGET_S - ($(date +%s) - START)))
    echo "device_check.sh: install done after $(($(date +%s) - START)) s; $left s left for the stages"
    $PYTHON -m benchmarks.device_check --out "$OUT" --budget-s "$left" --wheels "$WHEELS" "$@"
}

main "$@" 2>&1 | tee "$OUT/device_check.log"
rc=${PIPESTATUS[0]}
echo "device_check.sh: exit $rc after $(($(date +%s) - START)) s" | tee -a "$OUT/device_check.log"
exit "$rc"
