#!/usr/bin/env bash
# Runs every benchmark, one after the other, and keeps their output in
# benchmarks/results/. Run it on a quiet machine: the figures are wall times.
#   bash benchmarks/run.sh            # all
#   bash benchmarks/run.sh core watch # some: the NAME of each benchmarks/bench_NAME.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet -e '.[test]'
mkdir -p benchmarks/results
wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
    for file in benchmarks/bench_*.py; do
        name=${file#benchmarks/bench_}
        wanted+=("${name%.py}")
    done
fi
{
    echo "# bgremove benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)," \
         "Python $(.venv/bin/python -c 'import platform; print(platform.python_version())')"
} | tee benchmarks/results/summary.md
for name in "${wanted[@]}"; do
    echo "== $name" | tee -a benchmarks/results/summary.md
    case "$name" in
        gimp)
            if [ "$(id -u)" != 0 ]; then
                echo "skipped: the GIMP benchmark needs root (it runs GIMP 3 in a Debian root)" |
                    tee -a benchmarks/results/summary.md
                continue
            fi ;;
    esac
    .venv/bin/python "benchmarks/bench_${name}.py" 2>&1 | tee -a benchmarks/results/summary.md
done
