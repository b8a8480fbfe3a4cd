"""The shape of the code (docs/architecture.md): packages whose imports run one way, no import
cycle, small modules and functions, and a map that names every module.

The imports are read from the sources (testkit/imports.py): an import inside a function or under
`TYPE_CHECKING` counts as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from testkit.imports import PACKAGE, find_cycle, graph, modules
from testkit.repo import REPO

# each package may import its own modules and those of the packages before it; spawn and daemon
# are two modes side by side (and the man pages' parts beside them), the entry points (cli, ctl,
# manpage) stand on everything
LAYERS = ["base", "config", "backend", "tables", "request", "monitor", ("spawn", "daemon", "man"),
          ""]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def package_of(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def layer_of(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package == layer or (isinstance(layer, tuple) and package in layer):
            return index
    raise AssertionError(f"package {package!r} is in no layer of LAYERS")


def test_the_scan_sees_the_imports():
    edges = graph()
    assert "request.dispatch" in edges and "base.eventloop" in edges["request.dispatch"]
    assert len(edges) > 40


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    """Imports at the top, in functions and for the type checker alike."""
    assert find_cycle(graph()) == []


def test_the_child_protocol_comes_from_childproto_never_from_the_worker():
    """Only the master, which forks workers, imports worker.py."""
    assert sorted(m for m, targets in graph().items() if "daemon.worker" in targets) == [
        "daemon.master"]


def test_imports_run_one_way_between_packages():
    wrong = []
    for module, targets in graph().items():
        own = package_of(module)
        for target in targets:
            other = package_of(target)
            if other != own and layer_of(other) >= layer_of(own):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_a_package_init_imports_nothing_and_says_in_one_line_what_the_package_is():
    """`import hapolicy.request.dispatch` runs every __init__ on the way: spawn mode pays them at
    each start."""
    for init in sorted(PACKAGE.rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        docstring = ast.get_docstring(tree)
        assert docstring, init
        if init.parent != PACKAGE:  # a subpackage's: one line
            assert "\n" not in docstring, f"{init}: a one-line docstring"
        assert not [n for n in tree.body if not isinstance(n, ast.Expr)
                    and not (isinstance(n, ast.Assign) and init.parent == PACKAGE)], init


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_are_small(path: Path):
    text = path.read_text()
    tree = ast.parse(text, str(path))
    assert ast.get_docstring(tree) or path.name == "__main__.py", f"{path}: no docstring"
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_architecture_map_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [str(path.relative_to(REPO)) for path in modules().values()
               if path.name != "__init__.py"
               and f"{path.relative_to(PACKAGE).as_posix()}" not in text]
    assert missing == []


def test_the_test_support_index_names_every_module():
    """scripts/testkit/__init__.py says in a line what each of its modules is for."""
    kit = REPO / "scripts" / "testkit"
    index = (kit / "__init__.py").read_text()
    missing = [path.stem for path in sorted(kit.glob("*.py"))
               if path.stem != "__init__" and f":mod:`testkit.{path.stem}`" not in index]
    assert missing == []
