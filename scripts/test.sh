#!/usr/bin/env bash
# Installs the test tools into .venv and runs every check: ruff, mypy, pytest.
# The GIMP integration test builds a Debian trixie root on first use (root and
# the Debian mirror needed; it says so first, and BGREMOVE_SKIP_GIMP=1 skips it);
# elsewhere it is skipped with a line saying why. With CI=true it is never skipped:
# not being able to build or use that root fails the run.
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
root="${BGREMOVE_GIMP_ROOT:-/var/cache/bgremove/gimp-root}"
if [ "$(id -u)" -eq 0 ] && [ "${BGREMOVE_SKIP_GIMP:-}" != 1 ] && [ ! -f "$root/.bgremove-root-ready" ]; then
    echo "== note: the real-GIMP test installs mmdebstrap on this host if missing and builds a Debian root with GIMP 3 in $root (about 700 MB); BGREMOVE_SKIP_GIMP=1 skips it"
fi
echo "== pytest"
.venv/bin/python -m pytest -ra "$@"
