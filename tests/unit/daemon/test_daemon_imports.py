"""The modules of hapolicy/daemon import one another one way: no cycle, counting every import
(at the top, in a function, under TYPE_CHECKING); and the master-child protocol comes from
childproto.py, never from worker.py."""

from __future__ import annotations

import ast
from pathlib import Path

import hapolicy.daemon

PACKAGE = "hapolicy.daemon"
DIRECTORY = Path(hapolicy.daemon.__file__).parent


def imported_siblings(path: Path) -> set[str]:
    """The modules of the package that the module at path imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[2] for alias in node.names
                         if alias.name.startswith(PACKAGE + "."))
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: imported_siblings(path) for path in sorted(DIRECTORY.glob("*.py"))}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(module: str, path: list[str]) -> None:
        for other in sorted(edges.get(module, ())):
            if other in path:
                found.append(path[path.index(other):] + [other])
            else:
                walk(other, path + [other])

    for module in edges:
        walk(module, [module])
    return found


def test_the_finder_sees_every_kind_of_import():
    edges = graph()
    assert "supervision" in edges["master"]  # at the top
    assert "supervision" in edges["monitor"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) != []


def test_no_import_cycle_in_the_daemon():
    assert cycles(graph()) == []


def test_only_the_master_imports_the_worker():
    assert sorted(m for m, imports in graph().items() if "worker" in imports) == ["master"]
