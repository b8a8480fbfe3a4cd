"""The upgrade in place (SIGUSR2) at its edges, with real processes: the new program is a copy
of the package changed on disk after the old master started, so that it fails at a chosen
moment. A new master that dies right after it said it serves (before the old one handed over)
leaves the old one serving, the pidfile its own again; an operator's command sent during an
upgrade that then rolls back is answered by the master that stays, and is not lost.
"""

from __future__ import annotations

import signal
import time

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon, short_tmpdir
from testkit.install import package_copy, patch
from testkit.ports import HOST
from testkit.processes import alive
from testkit.protocol import PolicyClient, request


def test_a_new_master_that_dies_right_after_ready_leaves_the_old_master_serving():
    tree = package_copy(short_tmpdir())
    pidfile = tree / "hapolicy.pid"
    with FakeBackend(action="OK") as backend, Daemon(
            "-s", f"A={HOST}:{backend.port}", "--pidfile", str(pidfile), workers=2, cwd=tree,
            env={"PYTHONPATH": str(tree)}) as daemon:
        master = daemon.pid
        daemon.wait_ready()
        # the new program crashes just after it wrote the pidfile and told the old master it
        # serves (say, an internal error in the rest of that turn of its loop)
        patch(tree, "daemon/succession.py", "        self.handover.ready()\n",
              "        self.handover.ready()\n        import os; os._exit(70)\n")
        daemon.send(signal.SIGUSR2)
        _, line = daemon.log.wait("upgrade failed")
        assert "exited with status 70" in line
        time.sleep(0.5)
        assert alive(master) and daemon.pid == master
        assert pidfile.read_text() == f"{master}\n"
        assert "upgrade: new master" not in daemon.log.text()
        with PolicyClient(HOST, daemon.port) as client:
            assert client.ask(request()) == "action=OK\n\n"


def test_a_command_answered_during_an_upgrade_that_rolls_back_is_not_lost():
    tree = package_copy(short_tmpdir())
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
        told = ctl("--control", control, "disable", "default/A")  # waits for the outcome
        assert told.returncode == 0, told.stderr
        daemon.log.wait("upgrade failed", timeout=20)
        rows = csv_rows(control)
        assert rows["default/A"]["admin"] == "disabled", rows
