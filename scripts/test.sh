#!/usr/bin/env bash
# Installs the test tools into .venv and runs every check: ruff, mypy, pytest.
# The GIMP integration test builds a Debian trixie root on first use (root and
# the Debian mirror needed); elsewhere it is skipped with a line saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
bash scripts/mypy.sh
echo "== pytest"
.venv/bin/python -m pytest -ra "$@"
