#!/usr/bin/env bash
# The main job: install what is needed, then run the demo on the embedded shapes world.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec .venv/bin/rewardiff demo "$@"
