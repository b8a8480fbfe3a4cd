"""The repository's scripts (scripts/*.py) run by the tests, with a JSON report to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from testkit.repo import REPO


def run_script(name: str, *args: str, json_out: Path, timeout: float = 120,
               cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, dict[str, Any], str]:
    """Run ``python scripts/NAME ARGS --json JSON_OUT`` from the repository (or from cwd).

    Returns (the finished process, the report it wrote, a detail text with its exit status
    and output for assertion messages); AssertionError when it wrote no report.
    """
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args, "--json", str(json_out)],
        cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert json_out.exists(), detail
    return proc, json.loads(json_out.read_text()), detail
