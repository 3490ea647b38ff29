#!/usr/bin/env bash
# Install (with test tools) and run everything CI runs: ruff, mypy, the pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k canonical).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
export PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers, a test file each at a time (module fixtures stay whole); tests/conftest.py gives
# each worker one torch thread, so the two cores are shared, not oversubscribed.
.venv/bin/python -m pytest -n 2 --dist loadfile --durations=15 "$@"  # the slowest, to keep it short
