"""Install, remove and check the GIMP 3 plug-in.

GIMP 3 registers a Python plug-in only when it sits at
``plug-ins/NAME/NAME.py`` with its run bit set, so the plug-in goes to
``<plug-ins>/python-fu-remove-background/python-fu-remove-background.py``.
Beside it, ``bgremove-gimp.json`` records the interpreter that ran the install
(``sys.executable``, not resolved: a venv's ``bin/python`` must stay the venv's)
so the plug-in can start the bridge in this environment, and ``help/en/`` holds
the page the dialog's Help button opens (GIMP's help map ``gimp-help.xml`` and
``index.html``).

Where ``plug-ins`` is, per platform (``--plugins-dir`` overrides):

    Linux    $XDG_CONFIG_HOME/GIMP/3.0/plug-ins (default ~/.config/...), and also
             ~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins when GIMP's Flatpak is there
    macOS    ~/Library/Application Support/GIMP/3.0/plug-ins
    Windows  %APPDATA%\\GIMP\\3.0\\plug-ins
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bgremove.errors import OutputError
from bgremove.files import atomic_write

log = logging.getLogger(__name__)

PLUGIN_NAME = "python-fu-remove-background"
SETTINGS_FILE = "bgremove-gimp.json"
GIMP_SERIES = "3.0"
FLATPAK_ID = "org.gimp.GIMP"
SOURCE = Path(__file__).with_name("remove_background.py")
HELP_SOURCE = Path(__file__).with_name("help")
HELP_FILES = ("en/gimp-help.xml", "en/index.html")


@dataclass(frozen=True)
class PluginStatus:
    """What ``bgremove doctor`` reports about the plug-in."""

    installed: bool  # the plug-in file is in one of GIMP's plug-in folders
    current: bool  # it matches this bgremove and its interpreter exists
    path: Path | None  # the installed plug-in file (the first found)
    python: str | None  # the interpreter it will run
    message: str  # one line for a person


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def default_plugin_dirs(env: Mapping[str, str] | None = None,
                        platform: str | None = None) -> list[Path]:
    """GIMP 3's user plug-in folders on this platform, most likely first."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if platform.startswith("win"):
        appdata = env.get("APPDATA") or str(_home(env) / "AppData" / "Roaming")
        return [Path(appdata) / "GIMP" / GIMP_SERIES / "plug-ins"]
    if platform == "darwin":
        return [_home(env) / "Library" / "Application Support" / "GIMP" / GIMP_SERIES
                / "plug-ins"]
    config_home = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
    dirs = [config_home / "GIMP" / GIMP_SERIES / "plug-ins"]
    flatpak_app = _home(env) / ".var" / "app" / FLATPAK_ID
    if flatpak_app.is_dir():
        dirs.append(flatpak_app / "config" / "GIMP" / GIMP_SERIES / "plug-ins")
    return dirs


def plugin_file(plugins_dir: Path) -> Path:
    return plugins_dir / PLUGIN_NAME / f"{PLUGIN_NAME}.py"


def _protocol() -> int:
    from bgremove.plugin_gimp.bridge import PROTOCOL

    return PROTOCOL


def install(plugins_dir: Path | None = None, *, python: str | None = None,
            env: Mapping[str, str] | None = None, platform: str | None = None) -> list[Path]:
    """Install the plug-in into ``plugins_dir`` (default: every GIMP 3 folder found
    for ``platform`` and ``env``, this system's by default).

    Returns the installed plug-in files. Raises ``OutputError`` when a folder
    cannot be written.
    """
    from bgremove.version import __version__

    targets = [plugins_dir] if plugins_dir is not None else default_plugin_dirs(env, platform)
    python = python or sys.executable
    settings = {"python": python, "version": __version__, "protocol": _protocol()}
    source = SOURCE.read_bytes()
    installed = []
    for target in targets:
        path = plugin_file(Path(target).expanduser())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, source, mode=0o755)
            atomic_write(path.with_name(SETTINGS_FILE),
                         (json.dumps(settings, indent=2) + "\n").encode(), mode=0o644)
            for name in HELP_FILES:
                help_file = path.parent / "help" / name
                help_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(help_file, (HELP_SOURCE / name).read_bytes(), mode=0o644)
        except OSError as exc:
            raise OutputError(f"cannot install the GIMP plug-in into {path.parent}: "
                              f"{exc.strerror or exc}",
                              hint="pass --plugins-dir with a folder you can write") from None
        log.info("installed the GIMP plug-in at %s (runs %s)", path, python)
        installed.append(path)
    return installed


def uninstall(plugins_dir: Path | None = None, *, env: Mapping[str, str] | None = None,
              platform: str | None = None) -> list[Path]:
    """Remove the plug-in's folder wherever it is installed; return the folders removed."""
    targets = [plugins_dir] if plugins_dir is not None else default_plugin_dirs(env, platform)
    removed = []
    for target in targets:
        folder = plugin_file(Path(target).expanduser()).parent
        if not folder.is_dir():
            continue
        try:
            for name in (f"{PLUGIN_NAME}.py", SETTINGS_FILE, *(f"help/{h}" for h in HELP_FILES)):
                (folder / name).unlink(missing_ok=True)
            for sub in ("help/en", "help"):
                if (folder / sub).is_dir():
                    (folder / sub).rmdir()
            pycache = folder / "__pycache__"
            if pycache.is_dir():
                for item in pycache.iterdir():
                    item.unlink()
                pycache.rmdir()
            folder.rmdir()
        except OSError as exc:
            raise OutputError(f"cannot remove {folder}: {exc.strerror or exc}",
                              hint="remove the folder by hand") from None
        log.info("removed the GIMP plug-in from %s", folder)
        removed.append(folder)
    return removed


def status(plugins_dir: Path | None = None) -> PluginStatus:
    """Whether the plug-in is installed and current; never raises."""
    targets = [plugins_dir] if plugins_dir is not None else default_plugin_dirs()
    found = [plugin_file(Path(t).expanduser()) for t in targets]
    found = [path for path in found if path.is_file()]
    if not found:
        where = " or ".join(str(t) for t in targets)
        return PluginStatus(False, False, None, None,
                            f"the GIMP plug-in is not installed (looked in {where}); "
                            "run `bgremove gimp install`")
    path = found[0]
    python: str | None = None
    problem = None
    try:
        settings = json.loads(path.with_name(SETTINGS_FILE).read_text(encoding="utf-8"))
        python = settings.get("python") if isinstance(settings, dict) else None
        if not isinstance(python, str):
            problem = f"{SETTINGS_FILE} names no interpreter"
            python = None
        elif settings.get("protocol") != _protocol():
            problem = "it was installed by another version of bgremove"
        elif not Path(python).exists():
            problem = f"its interpreter {python} no longer exists"
    except (OSError, ValueError) as exc:
        problem = f"{SETTINGS_FILE} cannot be read ({exc})"
    if problem is None:
        try:
            if path.read_bytes() != SOURCE.read_bytes():
                problem = "the plug-in file differs from this bgremove's"
            elif os.name == "posix" and not path.stat().st_mode & stat.S_IXUSR:
                problem = "the plug-in file is not executable, so GIMP ignores it"
            elif any(not (path.parent / "help" / name).is_file() for name in HELP_FILES):
                problem = "its help page is missing"
        except OSError as exc:
            problem = f"cannot read {path} ({exc.strerror or exc})"
    if problem:
        return PluginStatus(True, False, path, python,
                            f"the GIMP plug-in at {path} is out of date: {problem}; "
                            "run `bgremove gimp install` again")
    return PluginStatus(True, True, path, python,
                        f"the GIMP plug-in is installed at {path} and runs {python}")
