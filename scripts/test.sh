#!/usr/bin/env bash
# The test suite: install what is needed (with the test and wandb extras, and Chromium), then run pytest offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test,wandb  # wandb: the optional --log backend, tested offline
# The report's browser test needs headless Chromium (Debian's package); install it when we may.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for tests/test_report_browser.py ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "could not install chromium: the browser test will be skipped" >&2
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
