#!/usr/bin/env bash
# Build (once) a Debian trixie root holding a real GIMP 3.0 for the plug-in's
# integration test and benchmark, per shared/docs/gimp3-headless.md.
#
# The root also gets a Python environment usable INSIDE it (its Python is 3.13,
# the host's may differ): a venv at /opt/bgremove-venv made with
# --system-site-packages over Debian's python3-httpx, -pil, -yaml, -platformdirs
# and -watchdog, plus a .pth file pointing at /opt/bgremove/src. The tests copy
# the package there before each run as pip installs it (core/ as src/bgremove,
# watcher/ and plugin_gimp/ inside it; see tests/gimp_batch/harness.py), then
# run `python -m bgremove gimp install` with
# the venv's python, so the interpreter recorded at install time is the venv's,
# exactly as for a user who ran `bgremove gimp install` in their own env.
#
# Idempotent and cached: the root lives at $BGREMOVE_GIMP_ROOT (default
# /var/cache/bgremove/gimp-root); a finished root carries a stamp file and a
# second run only prints its path. Built in a temporary folder and renamed, so an
# interrupted build never leaves a half root behind.
#
# Needs root and the Debian mirror. About 40-90 s and 700 MB on a fresh machine.
# Usage: scripts/gimp-root.sh           -> prints the root's path on stdout
set -euo pipefail

root="${BGREMOVE_GIMP_ROOT:-/var/cache/bgremove/gimp-root}"
mirror="${BGREMOVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the package list or the layout below changes: old roots get rebuilt.
stamp_version="2"
stamp="$root/.bgremove-root-ready"

packages=(
    gimp python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4 gir1.2-babl-0.1 ca-certificates
    python3-venv python3-httpx python3-pil python3-yaml python3-platformdirs python3-watchdog
)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_version" ]; then
    echo "$root"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "gimp-root.sh: needs root (mmdebstrap and chroot)" >&2
    exit 77
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap (without recommends: they upgrade host packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends mmdebstrap >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends mmdebstrap >&2; }
fi

# One builder at a time (two test processes may ask for the root at once).
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_version" ]; then
    echo "$root"
    exit 0
fi

tmp="$root.building"
rm -rf "$tmp"
echo "building the GIMP 3 root at $root (about a minute, about 700 MB)" >&2
include=$(IFS=,; echo "${packages[*]}")
mmdebstrap --variant=apt --include="$include" trixie "$tmp" "$mirror" >&2

# Host CA certificates (a proxy's CA, for example), so TLS works inside as outside.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$tmp/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$tmp/usr/local/share/ca-certificates/"
    chroot "$tmp" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates >/dev/null 2>&1 || true
fi

# The project's environment inside the root.
chroot "$tmp" env -i HOME=/root PATH=/usr/bin:/bin \
    python3 -m venv --system-site-packages /opt/bgremove-venv
mkdir -p "$tmp/opt/bgremove/src"
site=$(chroot "$tmp" env -i PATH=/usr/bin:/bin /opt/bgremove-venv/bin/python -c \
    'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "/opt/bgremove/src" > "$tmp$site/bgremove-src.pth"

# Warm GIMP's first start (plug-in registration, font cache) so tests start fast.
chroot "$tmp" env -i HOME=/root PATH=/usr/bin:/bin \
    gimp-console-3.0 -i -n --batch-interpreter=python-fu-eval -b 'pass' --quit >/dev/null 2>&1 || true

echo "$stamp_version" > "$tmp/.bgremove-root-ready"
rm -rf "$root"
mv "$tmp" "$root"
echo "$root"
