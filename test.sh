#!/usr/bin/env bash
# Set everything up, then run lint, type checks and every test: unit tests on the host,
# kernel tests (marked `kernel`) inside one user-mode-linux guest.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/ruff check ipvsproxy testkit tests bench
.venv/bin/ruff format --check ipvsproxy testkit tests bench
.venv/bin/mypy
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$status"
