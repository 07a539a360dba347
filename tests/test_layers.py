"""The import structure of the package, checked on the source (AST; nothing is imported).

Layers, top to bottom; a module imports only from its own layer and the layers below:

    command line   bgremove.cli, bgremove.__main__, bgremove.commands.*
    watcher        bgremove.watcher.*          } side by side: neither imports the other
    GIMP plug-in   bgremove.plugin_gimp.*      }
    core           every other bgremove module

Leaves: ``bgremove.errors``, ``bgremove.version`` and ``bgremove.choices`` import no
bgremove module, ``bgremove.contract`` (the backend contract) only the errors. No import cycles
among modules (imports inside functions count, ``if TYPE_CHECKING:`` ones do not).
The plug-in file GIMP loads (remove_background.py) imports nothing from bgremove.

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
FOLDERS = {"core": "bgremove", "watcher": "bgremove.watcher",
           "plugin_gimp": "bgremove.plugin_gimp"}
CODE = ("core", "watcher", "plugin_gimp", "tests", "benchmarks", "scripts")
LAYERS = {  # name: (rank, module prefixes); a lower rank sits higher
    "command line": (0, ("bgremove.cli", "bgremove.__main__", "bgremove.commands")),
    "watcher": (1, ("bgremove.watcher",)),
    "GIMP plug-in": (1, ("bgremove.plugin_gimp",)),
}
LEAVES = {"bgremove.errors": set(), "bgremove.version": set(), "bgremove.choices": set(),
          "bgremove.files": set(),
          "bgremove.contract": {"bgremove.errors"}}
GIMP_SIDE = "bgremove.plugin_gimp.remove_background"


def python_files(folders: tuple[str, ...] = CODE) -> Iterator[Path]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_names(tree: ast.AST, *, typing_too: bool = True) -> Iterator[tuple[int, str]]:
    """(line, module) of each import: ``from a.b import c`` gives a.b and a.b.c."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing_too:
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def import_graph(*, typing_too: bool) -> dict[str, dict[str, int]]:
    """bgremove module -> {bgremove module it imports: line}."""
    files = {module_name(p): p for p in python_files(tuple(FOLDERS))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = graph.setdefault(name, {})
        for line, target in imported_names(tree, typing_too=typing_too):
            if target in files and target != name:
                edges.setdefault(target, line)
    return graph


def layer_of(module: str) -> tuple[str, int]:
    for name, (rank, prefixes) in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name, rank
    return "core", 2


def test_nothing_imports_a_folder_name() -> None:
    wrong = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        wrong += [f"{path.relative_to(REPO)}:{line}: {name}"
                  for line, name in imported_names(tree) if name.split(".")[0] in FOLDERS]
    assert not wrong, "import bgremove.<module> instead: " + ", ".join(sorted(set(wrong)))


def test_each_layer_imports_only_its_own_and_the_layers_below() -> None:
    wrong = []
    for module, edges in import_graph(typing_too=True).items():
        layer, rank = layer_of(module)
        for target, line in edges.items():
            target_layer, target_rank = layer_of(target)
            if target_layer != layer and target_rank <= rank:
                wrong.append(f"{module}:{line} ({layer}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_leaves_import_nothing_else_from_bgremove() -> None:
    graph = import_graph(typing_too=True)
    for leaf, allowed in LEAVES.items():
        assert set(graph[leaf]) <= allowed, (leaf, graph[leaf])
    assert not graph[GIMP_SIDE], "the file GIMP loads must not import bgremove"


def test_no_import_cycles() -> None:
    graph = import_graph(typing_too=False)
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, cycles


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found
