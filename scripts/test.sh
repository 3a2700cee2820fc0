#!/usr/bin/env bash
# The test suite: install what is needed (with the test extra), then run pytest offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
