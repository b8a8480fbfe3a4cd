"""Review findings on the upgrade in place (SIGUSR2), with real processes: the new program is a
copy of the package changed on disk after the old master started, so that it fails at a chosen
moment. A new master that dies before the old one handed over must leave the old one serving;
an operator's command answered during an upgrade that rolls back must not be lost.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.ports import HOST
from testkit.processes import alive
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO


def installed_copy() -> Path:
    where = short_tmpdir()
    shutil.copytree(REPO / "hapolicy", where / "hapolicy")
    return where


def patch(tree: Path, module: str, old: str, new: str) -> None:
    path = tree / "hapolicy" / module
    text = path.read_text()
    assert old in text, f"{module}: {old!r}"
    path.write_text(text.replace(old, new, 1))


def test_a_new_master_that_dies_right_after_ready_leaves_the_old_master_serving():
    tree = installed_copy()
    with FakeBackend(action="OK") as backend, Daemon(
            "-s", f"A={HOST}:{backend.port}", workers=2, cwd=tree,
            env={"PYTHONPATH": str(tree)}) as daemon:
        master = daemon.pid
        daemon.wait_ready()
        # the new program crashes just after it told the old master it serves (say, an
        # internal error in the rest of that turn of its loop)
        patch(tree, "daemon/succession.py", "        self.handover.ready()\n",
              "        self.handover.ready()\n        import os; os._exit(70)\n")
        daemon.send(signal.SIGUSR2)
        daemon.log.wait("upgrade: started the new program")
        time.sleep(2)
        assert alive(master), daemon.log.text()  # today: it handed over to a corpse, exit 0
        with PolicyClient(HOST, daemon.port) as client:  # today: connection refused
            assert client.ask(request()) == "action=OK\n\n"


def test_a_command_answered_during_an_upgrade_that_rolls_back_is_not_lost():
    tree = installed_copy()
    control = str(tree / "control")
    with FakeBackend(action="OK") as backend, Daemon(
            "-s", f"A={HOST}:{backend.port}", "--control", control, workers=2, cwd=tree,
            env={"PYTHONPATH": str(tree)}) as daemon:
        daemon.wait_ready()
        # the new program never counts its workers as serving, and dies after 4 s
        serving = "            serving = len(self.supervisor.serving(WORKER))\n"
        patch(tree, "daemon/master.py", serving,
              "            serving = 0 if self.handover is not None else len(\n"
              "                self.supervisor.serving(WORKER))\n"
              "            if self.handover is not None and time.monotonic() - START > 4:\n"
              "                os._exit(3)  # a late failure\n")
        patch(tree, "daemon/master.py", "TABLE_SLOTS = 128",
              "START = time.monotonic()\nTABLE_SLOTS = 128")
        daemon.send(signal.SIGUSR2)
        daemon.log.wait("upgrade: the state of")
        told = ctl("--control", control, "disable", "default/A")
        assert told.returncode == 0, told.stderr  # the new master's monitor said ok
        daemon.log.wait("upgrade failed", timeout=20)
        rows = csv_rows(control)
        assert rows["default/A"]["admin"] == "disabled", rows  # today: enabled, the ok lost
