#!/usr/bin/env bash
# mypy strict over the package ``bgremove`` as it is installed. pyproject.toml maps the
# folders core/ -> bgremove, watcher/ -> bgremove.watcher, plugin_gimp/ ->
# bgremove.plugin_gimp; mypy names modules after folders and cannot read that mapping,
# so this builds build/typecheck/bgremove from symlinks in the installed layout (afresh
# each run, so new files are seen) and checks that. Messages name the symlinked paths:
# build/typecheck/bgremove/x.py is core/x.py, .../bgremove/watcher/ is watcher/.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/bgremove
rm -rf build/typecheck
mkdir -p "$tree"
for entry in core/* core/.[!.]*; do
    [ -e "$entry" ] || continue
    name=$(basename "$entry")
    [ "$name" = "__pycache__" ] && continue
    ln -s "../../../$entry" "$tree/$name"
done
ln -s ../../../watcher "$tree/watcher"
ln -s ../../../plugin_gimp "$tree/plugin_gimp"
exec "${MYPY:-.venv/bin/mypy}" "$@"
