#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install rewardiff into it.
# CPU machines: torch is pinned through constraints-cpu.txt (a CPU wheel); set
# REWARDIFF_CONSTRAINTS=/dev/null on a GPU machine that already has CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REWARDIFF_VENV:-.venv}"
CONSTRAINTS="${REWARDIFF_CONSTRAINTS:-constraints-cpu.txt}"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Reinstall only when what we install from has changed.
stamp="$VENV/.rewardiff-install-$(cat pyproject.toml "$CONSTRAINTS" 2>/dev/null | sha256sum | cut -c1-16)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "installing rewardiff into $VENV (constraints: $CONSTRAINTS) ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
