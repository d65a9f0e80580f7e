#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything into it.
# torch goes first and explicitly: a plain "torch" requirement would pull a multi-GB CUDA build,
# while torch==2.13.0 takes the CPU wheel on CPU machines (a GPU runner installs its CUDA build the
# same way, from its own index). The rest comes from PyPI, pinned by requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q uv
.venv/bin/uv pip install -q --python .venv/bin/python -c requirements.lock -e ".[dev]"
rm -f .venv/.installed-* && touch "$stamp"
