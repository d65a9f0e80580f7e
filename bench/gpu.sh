#!/usr/bin/env bash
# One command for a GPU: the SD-scale numbers of issue 16 in one table and of issue 32's SD3.5/FLUX rows (bench/gpu.py; ≤ 9 min on an H200).
#   bench/gpu.sh              # needs CUDA; writes bench/gpu-results.md
#   bench/gpu.sh --dry-run    # tiny configs on the CPU: checks that it starts
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 570 "${PYTHON:-.venv/bin/python}" bench/gpu.py "$@"
