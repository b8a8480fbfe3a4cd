"""The request package's structure holds (its modules import each other without a cycle:
tests/unit/test_architecture.py): the dispatcher and the job import none of the hooks attached to a dispatcher from above (the lane, the hedger, the
mirrors), which in the package only the builder (assembly.py) imports; a Job's fields are
written by its own methods only; and nobody reaches into a Selector's private methods."""

from __future__ import annotations

import ast

from testkit import imports
from testkit.repo import REPO

PACKAGE = REPO / "hapolicy"
REQUEST = PACKAGE / "request"
HOOKS = {"lane", "hedge", "shadow"}


def graph() -> dict[str, set[str]]:
    """The request modules and the request modules each imports (testkit/imports.py)."""
    return {name.removeprefix("request."): {m.removeprefix("request.") for m in targets
                                             if m.startswith("request.")}
            for name, targets in imports.graph().items() if name.startswith("request.")
            and not name.endswith("__init__")}


def test_the_hooks_are_imported_by_the_builder_alone():
    edges = graph()
    assert not edges["dispatch"] & (HOOKS | {"assembly"}), edges["dispatch"]
    assert not edges["job"] & (HOOKS | {"dispatch", "assembly"}), edges["job"]
    for name, targets in edges.items():
        if name not in ("assembly", "shadow"):  # shadow: its mirror dispatchers are built
            assert not targets & HOOKS, (name, targets & HOOKS)
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
