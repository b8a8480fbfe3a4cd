"""The repository under test and how to run its hapolicy (``python -m hapolicy``)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def hapolicy_env() -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH, and XDG_RUNTIME_DIR
    a private directory of this process (runtime_dir): the state files that spawn mode makes
    by default land there, not in the user's own. Without the variables of systemd's notify
    and socket activation protocols (a test sets them itself)."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES"):  # a test that wants systemd's variables sets them itself
        env.pop(key, None)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    env["XDG_RUNTIME_DIR"] = runtime_dir()
    return env


_runtime: list[str] = []


def runtime_dir() -> str:
    """A directory of this test process (mode 0700, removed when it exits)."""
    if not _runtime:
        _runtime.append(tempfile.mkdtemp(prefix="hapolicy-xdg-"))
        atexit.register(shutil.rmtree, _runtime[0], True)
    return _runtime[0]


def command(args: Sequence[str]) -> list[str]:
    """The argv of ``python -m hapolicy ARGS`` with this interpreter."""
    return [sys.executable, "-m", "hapolicy", *args]


def run_hapolicy(args: Sequence[str], cwd: Path | str = REPO,
                 timeout: float = 20) -> subprocess.CompletedProcess:
    """Run ``python -m hapolicy ARGS`` to its end; its exit status and text output."""
    return subprocess.run(command(args), check=False, cwd=cwd, env=hapolicy_env(),
                          capture_output=True, text=True, timeout=timeout)
