#!/usr/bin/env bash
# Create the peers' virtual environments for benchmarks/peers/run.py.
#
#   benchmarks/peers/setup.sh [--openvino] [VENVS_DIR]
#                      (default: .peer-venvs at the repository root, git-ignored; run.py --venvs takes
#                       the same folder; --openvino also makes VENVS_DIR/optimum-intel for the
#                       optimum-intel peer, pins: requirements-optimum-intel.txt)
#
# Only optimum gets its own environment: its pins conflict with answer-trt's (it needs
# transformers < 4.58; answer-trt's environment has transformers 5.x). diffusers eager
# runs in answer-trt's own environment (.venv), whose diffusers/transformers are the
# versions answer-trt's parity tests use, so no third environment is needed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
openvino=0
if [ "${1:-}" = "--openvino" ]; then openvino=1; shift; fi
dest="${1:-$here/../../.peer-venvs}"
python="${PYTHON:-python3}"
mkdir -p "$dest"
if [ ! -x "$dest/optimum/bin/python" ]; then
    "$python" -m venv "$dest/optimum"
fi
# torch first, alone, so that pip takes the CPU wheel rather than resolving a CUDA build.
"$dest/optimum/bin/pip" install --quiet "torch==2.13.0"
"$dest/optimum/bin/pip" install --quiet -r "$here/requirements-optimum.txt"
"$dest/optimum/bin/python" -c "import optimum.onnxruntime, diffusers, transformers; print('optimum venv ready:', transformers.__version__, diffusers.__version__)"
if [ "$openvino" = 1 ]; then
    # optimum-intel's pins conflict with answer-trt's (torch 2.14, transformers 5.5): its own environment.
    if [ ! -x "$dest/optimum-intel/bin/python" ]; then
        "$python" -m venv "$dest/optimum-intel"
    fi
    "$dest/optimum-intel/bin/pip" install --quiet "torch==2.13.0"
    "$dest/optimum-intel/bin/pip" install --quiet -r "$here/requirements-optimum-intel.txt"
    "$dest/optimum-intel/bin/pip" uninstall --quiet -y torchvision 2>/dev/null || true
    "$dest/optimum-intel/bin/python" -c "from optimum.intel import OVStableDiffusionPipeline; import openvino; print('optimum-intel venv ready:', openvino.__version__)"
fi
