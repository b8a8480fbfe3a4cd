"""Review of issue 32: `hapolicyctl check -t SECONDS` bounds each answer's wait, as the
Monitoring Plugins guidelines ask of a plugin's timeout: a control socket that answers a byte
at a time (a wedged or foreign daemon) gets UNKNOWN once -t has passed, not a check that runs
as long as the bytes keep coming."""

from __future__ import annotations

import subprocess
import sys

from testkit.daemon import short_tmpdir
from testkit.fakecontrol import FakeControl
from testkit.repo import REPO, hapolicy_env


def test_check_gives_up_once_its_timeout_has_passed():
    path = str(short_tmpdir() / "control")
    with FakeControl(path, drip=0.3):
        try:
            done = subprocess.run([sys.executable, "-m", "hapolicy.ctl", "--control", path,
                                   "check", "-t", "1", "--interval", "0.1"], cwd=REPO,
                                  env=hapolicy_env(), capture_output=True, text=True,
                                  timeout=20, check=False)
        except subprocess.TimeoutExpired:
            done = None
    assert done is not None, "check -t 1 still waited for the answer after 20 s"
    assert done.returncode == 3 and done.stdout.startswith("HAPOLICY UNKNOWN - "), done
