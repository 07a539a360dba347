"""What ``pip install .`` puts in site-packages: exactly one top-level name, ``bgremove``.

pyproject.toml maps the repository's folders onto that one package (core/ ->
``bgremove``, watcher/ -> ``bgremove.watcher``, plugin_gimp/ -> ``bgremove.plugin_gimp``)
and lists every subpackage by hand, so a new folder must be added there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bgremove.version import __version__

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"bgremove": "core", "bgremove.watcher": "watcher",
           "bgremove.plugin_gimp": "plugin_gimp"}


def _setuptools() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        table: dict[str, object] = tomllib.load(fh)["tool"]["setuptools"]
    return table


def _package_folders() -> dict[str, Path]:
    """Every package the folders hold, by its installed name."""
    found = {}
    for name, folder in FOLDERS.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / folder)
            if "__pycache__" in rel.parts:
                continue
            found[".".join((name, *rel.parts))] = init.parent
    return found


def test_the_three_folders_are_mapped_into_one_package() -> None:
    assert _setuptools()["package-dir"] == FOLDERS


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    assert listed == set(_package_folders())


@pytest.mark.timeout(600)
def test_the_wheel_installs_exactly_bgremove(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path / "src"
    for folder in (*FOLDERS.values(), "pyproject.toml", "README.md"):
        if (REPO / folder).is_dir():
            shutil.copytree(REPO / folder, src / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / folder, src / folder)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp_path), str(src)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("bgremove-*.whl")
    assert wheel.name.startswith(f"bgremove-{__version__}-")  # the version has one source
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"bgremove"}
    for package in _package_folders():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "bgremove/py.typed" in names
    assert "bgremove/plugin_gimp/remove_background.py" in names
