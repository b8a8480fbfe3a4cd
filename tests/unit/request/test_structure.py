"""The request package's structure holds: its modules import each other without a cycle (an
import in a function or under TYPE_CHECKING counts as any other); the dispatcher and the job
import none of the hooks attached to a dispatcher from above (the lane, the hedger, the
mirrors), which in the package only the builder (assembly.py) imports; a Job's fields are
written by its own methods only; and nobody reaches into a Selector's private methods."""

from __future__ import annotations

import ast

from testkit.repo import REPO

PACKAGE = REPO / "hapolicy"
REQUEST = PACKAGE / "request"
HOOKS = {"lane", "hedge", "shadow"}


def imported(path) -> set[str]:
    """The modules of hapolicy.request that the module at path imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        names |= {m.split(".")[2] for m in modules
                  if m.startswith("hapolicy.request.") and len(m.split(".")) >= 3}
    return names - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in REQUEST.glob("*.py")}
    return {name: imported(path) & set(modules) for name, path in modules.items()}


def test_the_request_modules_import_each_other_without_a_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name in done:
            return
        for other in sorted(edges[name]):
            visit(other, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_the_hooks_are_imported_by_the_builder_alone():
    edges = graph()
    assert not edges["dispatch"] & (HOOKS | {"assembly"}), edges["dispatch"]
    assert not edges["job"] & (HOOKS | {"dispatch", "assembly"}), edges["job"]
    for name, imports in edges.items():
        if name not in ("assembly", "shadow"):  # shadow: its mirror dispatchers are built
            assert not imports & HOOKS, (name, imports & HOOKS)
    assert edges["assembly"] >= {"dispatch", "lane", "hedge"}


def test_only_a_job_writes_its_fields():
    for path in PACKAGE.rglob("*.py"):
        if path == REQUEST / "job.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                       else [])
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "job"):
                    raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} writes "
                                         f"job.{target.attr}")


def test_nobody_calls_a_selectors_private_methods():
    for path in PACKAGE.rglob("*.py"):
        if path == REQUEST / "selection.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "selector"):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} calls "
                                     f"selector.{node.attr}")
