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
# The browser test (tests/test_ui_browser.py) drives Debian's chromium, never a browser Playwright
# downloads: install it where we can (root + apt-get), else say why that test will be skipped.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian's chromium for tests/test_ui_browser.py"
    apt_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
    apt_chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt_chromium >/dev/null 2>&1; } \
      || echo "bootstrap: note: apt-get could not install chromium; tests/test_ui_browser.py will be skipped" >&2
  else
    echo "bootstrap: note: /usr/bin/chromium is missing, so tests/test_ui_browser.py will be skipped;" \
         "install Debian's chromium (as root: apt-get install --no-install-recommends chromium)" >&2
  fi
fi
rm -f .venv/.installed-* && touch "$stamp"
