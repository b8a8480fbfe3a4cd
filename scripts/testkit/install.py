"""A copy of the package to run a daemon from, which a test then changes on disk: the program
an upgrade in place (SIGUSR2) starts is the one on disk at that moment.

Run the daemon with ``cwd=tree`` and ``env={"PYTHONPATH": str(tree)}`` (``python -m`` puts its
working directory first on sys.path).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from testkit.repo import REPO


def package_copy(where: Path) -> Path:
    """`where` with a copy of the package in it."""
    shutil.copytree(REPO / "hapolicy", where / "hapolicy")
    return where


def patch(tree: Path, module: str, old: str, new: str) -> None:
    """Replace the first `old` in the copy's module (a path under hapolicy/)."""
    path = tree / "hapolicy" / module
    text = path.read_text()
    assert old in text, f"{module}: {old!r}"
    path.write_text(text.replace(old, new, 1))


def set_version(tree: Path, version: str) -> None:
    """The version the copy says it is (`hapolicy --version`, the master's start line)."""
    init = tree / "hapolicy" / "__init__.py"
    text = init.read_text()
    start = text.index('__version__ = "') + len('__version__ = "')
    init.write_text(text[:start] + version + text[text.index('"', start):])
