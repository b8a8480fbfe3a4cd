"""The tree whose hapolicy the bench measures, and how its processes and this one reach it.

Contract: REPO is the repository that holds the bench (testkit.repo's, as a str).
child_env(tmp) is the environment of every process the bench starts: REPO first on
PYTHONPATH, no developer-mode variables (hapolicy runs as installed: its bytecode cached), and
XDG_RUNTIME_DIR tmp (spawn mode's state files go where the bench cleans). The bench starts them
in REPO too, because `python -m hapolicy` puts its working directory on sys.path before
PYTHONPATH: run from another checkout, it would measure that checkout's hapolicy.
use_tree_hapolicy() makes `import hapolicy` in the bench's own process take the tree's package
(--inprocess relays requests through it); hapolicy_missing() says why `python -m hapolicy`
cannot run here ('' when it can).
"""

from __future__ import annotations

import os
import sys

import testkit.repo

REPO = str(testkit.repo.REPO)


def child_env(tmp: str) -> dict[str, str]:
    """This process's environment, for the processes the bench starts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    env.pop("PYTHONDEVMODE", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # hapolicy as installed: its bytecode cached
    env["XDG_RUNTIME_DIR"] = tmp  # spawn mode's state files go where the bench cleans
    return env


def use_tree_hapolicy() -> None:
    """Let this process import the tree's hapolicy."""
    if REPO not in sys.path:
        # the tree need not be installed (Debian's python3 runs the bench from anywhere), and
        # an installed hapolicy (another checkout's) must not be measured instead
        sys.path.insert(0, REPO)


def hapolicy_missing() -> str:
    """'' when `python -m hapolicy` can run here (the tree's own package comes first)."""
    use_tree_hapolicy()
    try:
        import hapolicy.cli  # noqa: F401
    except ImportError as exc:
        return f"cannot import hapolicy ({exc}): pip install -e ."
    return ""
