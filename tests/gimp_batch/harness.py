"""Host side of the real-GIMP tests and benchmark (this file runs on the host, not in GIMP).

    root = ensure_root()          # scripts/gimp-root.sh: a cached Debian trixie root with GIMP 3
    prepare_root(root)            # copy the package in as installed, `bgremove gimp install`
    result = run_batch(root, "run_procedure.py", params, files, env)

The plug-in is installed the way a user does it: the root's venv python runs
``python -m bgremove gimp install``, so the interpreter recorded in
``bgremove-gimp.json`` is that venv's (Python 3.13, Debian's httpx/Pillow/PyYAML,
the repo on a .pth path). GIMP runs chrooted with a clean environment
(``env -i``); the emulator on the host's 127.0.0.1 is reachable from inside
because the root shares the network. GIMP runs one at a time per root (a lock
file), since they share the profile in /root/.config/GIMP/3.0; each run copies
this checkout's packages in and installs the plug-in while it holds that lock, so
two checkouts sharing the root never run each other's plug-in.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gimp-root.sh"
BATCH_DIR = Path(__file__).resolve().parent
VENV_PYTHON = "/opt/bgremove-venv/bin/python"
SRC_IN_ROOT = "opt/bgremove/src"
SRC_STAMP = ".copied-from"  # which checkout the sources in the root came from
PLUGINS_IN_ROOT = "/root/.config/GIMP/3.0/plug-ins"
BASE_ENV = {"HOME": "/root", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
BUILD_TIMEOUT = 1200
#: Set to 1 to skip the real-GIMP test instead of building its root (refused when CI=true).
SKIP_ENV = "BGREMOVE_SKIP_GIMP"


class RootUnavailable(Exception):
    """The GIMP root cannot be had on this machine; the message says why."""


def in_ci(env: Mapping[str, str] | None = None) -> bool:
    """CI=true: the real-GIMP test must run; not being able to is a failure, not a skip."""
    return (os.environ if env is None else env).get("CI", "").lower() == "true"


def unavailable_reason() -> str | None:
    """Why this machine cannot (or must not) run GIMP in a chroot, or None."""
    if os.environ.get(SKIP_ENV) == "1":
        return f"{SKIP_ENV}=1 is set"
    if not sys.platform.startswith("linux"):
        return "the real-GIMP test needs Linux (a Debian trixie chroot)"
    if os.geteuid() != 0:
        return "the real-GIMP test needs root (mmdebstrap and chroot)"
    if shutil.which("chroot") is None:
        return "the real-GIMP test needs the chroot command"
    return None


def ensure_root() -> Path:
    """Build (or find) the cached root; raise RootUnavailable with the reason."""
    reason = unavailable_reason()
    if reason:
        raise RootUnavailable(reason)
    try:
        done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise RootUnavailable(f"building the GIMP root took over {BUILD_TIMEOUT} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RootUnavailable(f"cannot build the GIMP root (Debian mirror unreachable?): {tail}")
    return Path(done.stdout.strip().splitlines()[-1])


def chroot_command(root: Path, argv: list[str], env: Mapping[str, str] | None = None
                   ) -> list[str]:
    variables = {**BASE_ENV, **(env or {})}
    return ["chroot", str(root), "env", "-i",
            *(f"{k}={v}" for k, v in variables.items()), *argv]


@contextmanager
def gimp_lock(root: Path) -> Iterator[None]:
    with open(f"{root}.gimp-run.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_root(root: Path) -> str:
    """Copy the package ``bgremove`` into the root and install the plug-in; return its output."""
    with gimp_lock(root):
        return _prepare_locked(root)


def _prepare_locked(root: Path) -> str:
    src = root / SRC_IN_ROOT
    staging = Path(tempfile.mkdtemp(prefix="src.", dir=src.parent))
    # The installed layout (pyproject.toml's package-dir): core/ is the package
    # ``bgremove``, watcher/ and plugin_gimp/ its subpackages.
    for folder, target in (("core", "bgremove"), ("watcher", "bgremove/watcher"),
                           ("plugin_gimp", "bgremove/plugin_gimp")):
        shutil.copytree(REPO / folder, staging / target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / SRC_STAMP).write_text(str(REPO), encoding="utf-8")
    old = src.with_name("src.old")
    if src.exists():
        src.rename(old)
    staging.rename(src)
    shutil.rmtree(old, ignore_errors=True)
    done = subprocess.run(
        chroot_command(root, [VENV_PYTHON, "-m", "bgremove", "gimp", "install",
                              "--plugins-dir", PLUGINS_IN_ROOT]),
        capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`bgremove gimp install` failed inside the root: {done.stderr}")
    return done.stdout


def _ensure_ours(root: Path) -> None:
    """Under the lock: put this checkout's sources back if another checkout replaced them.

    The root is shared by every checkout on the machine; a run from another one may
    have copied its own sources in between our prepare_root and our run.
    """
    stamp = root / SRC_IN_ROOT / SRC_STAMP
    try:
        ours = stamp.read_text(encoding="utf-8") == str(REPO)
    except OSError:
        ours = False
    if not ours:
        _prepare_locked(root)


@dataclass
class BatchRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    work: Path  # on the host
    results: dict[str, Any] | None

    def read(self, name: str) -> bytes:
        return (self.work / name).read_bytes()


def _command(root: Path, script: str, params: dict[str, Any], files: Mapping[str, bytes],
             env: Mapping[str, str]) -> tuple[list[str], Path]:
    tmp = root / "tmp"
    work = Path(tempfile.mkdtemp(prefix="bgremove-gimp-", dir=tmp))
    inside = "/" + str(work.relative_to(root))
    shutil.copy(BATCH_DIR / script, work / script)
    for name, data in files.items():
        (work / name).write_bytes(data)
    (work / "params.json").write_text(json.dumps(params), encoding="utf-8")
    command = chroot_command(
        root, ["gimp-console-3.0", "-i", "-n", "--batch-interpreter=python-fu-eval",
               "-b", f'exec(open("{inside}/{script}").read())', "--quit"],
        {**env, "BGREMOVE_BATCH_DIR": inside})
    return command, work


def _results(work: Path) -> dict[str, Any] | None:
    results_file = work / "results.json"
    return json.loads(results_file.read_text()) if results_file.is_file() else None


def run_batch(root: Path, script: str, params: dict[str, Any], files: Mapping[str, bytes],
              env: Mapping[str, str], timeout: float = 600) -> BatchRun:
    """Run ``tests/gimp_batch/<script>`` in gimp-console inside the root.

    ``files`` are written to the work folder (seen as ``BGREMOVE_BATCH_DIR`` inside),
    ``params`` as params.json. The caller removes ``result.work`` when done.
    """
    import time

    command, work = _command(root, script, params, files, env)
    with gimp_lock(root):
        _ensure_ours(root)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
        seconds = time.perf_counter() - started
    return BatchRun(done.returncode, done.stdout, done.stderr, seconds, work, _results(work))


@contextmanager
def running_batch(root: Path, script: str, params: dict[str, Any],
                  files: Mapping[str, bytes], env: Mapping[str, str]
                  ) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Start a batch and hand over the running GIMP (its pid is gimp-console's: chroot
    and env exec into it) and the work folder; the caller waits for it."""
    command, work = _command(root, script, params, files, env)
    with gimp_lock(root):
        _ensure_ours(root)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as process:
            try:
                yield process, work
            finally:
                if process.poll() is None:
                    process.kill()
                process.communicate()


def results_of(work: Path) -> dict[str, Any] | None:
    return _results(work)


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"
