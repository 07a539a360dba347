"""The import structure of the package, checked on the source (AST, nothing imported).

The folders core/, watcher/ and plugin_gimp/ are installed as one package,
``bgremove`` (see pyproject.toml), so no code may import them by folder name: from
the repository root ``import core`` would still work and load a second copy of
every module (two ``BgremoveError`` classes that do not catch each other).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDER_NAMES = {"core", "watcher", "plugin_gimp"}
CODE = ("core", "watcher", "plugin_gimp", "tests", "benchmarks", "scripts")


def python_files() -> Iterator[Path]:
    for folder in CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def imported_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def test_nothing_imports_a_folder_name() -> None:
    wrong = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        wrong += [f"{path.relative_to(REPO)}:{line}: {name}"
                  for line, name in imported_names(tree) if name.split(".")[0] in FOLDER_NAMES]
    assert not wrong, "import bgremove.<module> instead: " + ", ".join(wrong)
