#!/usr/bin/env bash
# Make a throwaway virtualenv holding rembg, for benchmarks/bench_local.py only.
#
# rembg pulls scipy, scikit-image, pymatting and numba (about 620 MB), so it never
# goes into the project's .venv. The venv lives outside the repo (default
# /tmp/bgremove-bench/rembg-venv, override with $REMBG_VENV) and is made once;
# running this again only prints its python path.
#
# Usage: scripts/rembg-env.sh            -> prints the venv's python on stdout
set -euo pipefail

venv="${REMBG_VENV:-/tmp/bgremove-bench/rembg-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import rembg" >/dev/null 2>&1; then
    echo "making $venv (rembg + onnxruntime; a few minutes, about 620 MB)" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet "rembg[cli]" onnxruntime >&2
fi
echo "$venv/bin/python"
