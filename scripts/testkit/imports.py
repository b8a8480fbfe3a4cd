"""hapolicy's import graph, read from its sources with `ast` (nothing is imported): every module
by dotted name below the package (`request.dispatch`; `cli` for the top), and the hapolicy
modules each one imports anywhere in it: at the top, in a function, under TYPE_CHECKING alike
(an import in a function couples two modules as much as one at the top)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from testkit.repo import REPO

PACKAGE = REPO / "hapolicy"


def modules() -> dict[str, Path]:
    """Every module of hapolicy/ by dotted name, `__init__` files included (`base.__init__`)."""
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
            for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of `known` that the module at `path` imports, by dotted name; a relative
    import is an error (hapolicy's imports are absolute)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            inner = name.removeprefix("hapolicy.")
            if inner != name and inner in known and not inner.endswith("__init__"):
                yield inner


def graph() -> dict[str, set[str]]:
    """Each module and the modules it imports (itself left out)."""
    known = modules()
    return {name: set(imported(path, known)) - {name} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or []."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []
