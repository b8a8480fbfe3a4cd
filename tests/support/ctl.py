"""`hapolicyctl` as a subprocess, and its csv read into rows by POOL/SERVICE."""

from __future__ import annotations

import subprocess
import sys

from support.repo import REPO, hapolicy_env


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hapolicy.ctl", *args], check=False, cwd=REPO,
                          env=hapolicy_env(), capture_output=True, text=True, timeout=20)


def csv_rows(path: str) -> dict[str, dict[str, str]]:
    """`hapolicyctl csv`'s rows as dicts of its columns, by `POOL/SERVICE`."""
    result = ctl("--control", path, "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# pool,service,address,state,admin,weight,answers,failures")
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return {f"{r['pool']}/{r['service']}": r for r in rows}
