"""The repository under test and how to run its hapolicy (``python -m hapolicy``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def hapolicy_env() -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    return env


def command(args: Sequence[str]) -> list[str]:
    """The argv of ``python -m hapolicy ARGS`` with this interpreter."""
    return [sys.executable, "-m", "hapolicy", *args]


def run_hapolicy(args: Sequence[str], cwd: Path | str = REPO,
                 timeout: float = 20) -> subprocess.CompletedProcess:
    """Run ``python -m hapolicy ARGS`` to its end; its exit status and text output."""
    return subprocess.run(command(args), check=False, cwd=cwd, env=hapolicy_env(),
                          capture_output=True, text=True, timeout=timeout)
