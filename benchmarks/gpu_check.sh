#!/usr/bin/env bash
# GPU check on a CUDA machine without network access. Bring the wheels along first
# (on a machine with network): pip download --dest benchmarks/wheels -c constraints.txt diffusers
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import diffusers" 2>/dev/null; then
    python -m pip install --no-index --find-links benchmarks/wheels --target "${WHEEL_TARGET:-/tmp/gpu-check-site}" diffusers
    export PYTHONPATH="${WHEEL_TARGET:-/tmp/gpu-check-site}${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python benchmarks/gpu_check.py
