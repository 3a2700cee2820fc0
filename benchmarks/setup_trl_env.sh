#!/usr/bin/env bash
# The environment of benchmarks/bench_ddpo_vs_trl.py ONLY: trl 0.22.2 (the last release with
# DDPOTrainer that runs with diffusers 0.42 / transformers 5.23) beside rewardiff, in its own
# .venv-bench-trl so that trl never enters the project's .venv. CPU torch via the constraints file.
#   bash benchmarks/setup_trl_env.sh && .venv-bench-trl/bin/python benchmarks/bench_ddpo_vs_trl.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench-trl
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"  # keep the benchmark environment out of git without touching the repo's .gitignore
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt torch==2.13.0 trl==0.22.2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e .
"$VENV/bin/python" -c "import trl, diffusers, transformers, torch; print('trl', trl.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
