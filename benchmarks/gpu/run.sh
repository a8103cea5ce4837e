#!/usr/bin/env bash
# The GPU run (issue 26): every CUDA path of answer-trt in one command, on a machine with
# no network. Installs the carried wheels (benchmarks/gpu/wheels.txt; folder $WHEELS,
# default .whl/) with --no-deps into a target folder, so what the machine has (torch
# above all) is never replaced; runs the project from this source tree without installing
# it; writes gpu_run.json, gpu_run.log and a few images to $OUT (or --out DIR); stops
# itself within --total-s seconds (default 450), each stage within its own budget.
#
#   benchmarks/gpu/run.sh                 # on the GPU machine
#   benchmarks/gpu/run.sh --device cpu    # the dry run (CI): tiny only, CUDA stages skipped
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/benchmarks/gpu/out}"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$out"
log="$out/gpu_run.log"
wheels="${WHEELS:-$root/.whl}"
site="${SITE:-$(mktemp -d)/site}"  # per run: concurrent runs must not rewrite each other's wheels
python="${PYTHON:-python3}"
{
    echo "gpu run: $(date -u +%FT%TZ) on $(hostname), $($python --version 2>&1)"
    if compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu run: installing $(ls "$wheels" | tr '\n' ' ')into $site (--no-deps)"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$wheels"/*.whl || { echo "gpu run: wheel install failed"; exit 3; }
    fi
    # The source tree first (answer_trt/export and answer_trt/synthetic are links to the
    # top-level folders, as pyproject's package-dir installs them), then the carried wheels.
    export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export ANSWER_TRT_CACHE="${ANSWER_TRT_CACHE:-$(mktemp -d)}"
    "$python" "$root/benchmarks/gpu/stages.py" --out "$out" "${args[@]}"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
