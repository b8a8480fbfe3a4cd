"""Deadlines of the manual (docs/), each bounded on both sides, with real processes on 127.0.0.1.

* `--total-timeout S`: a request is answered within S seconds whatever the services do, and
  not before: with every service silent (TIMEOUT 30), a 2 s total deadline answers the
  default action after 2.0 to 2.5 s, in the daemon and in spawn mode, also once every
  service is marked down.
* If the master dies, the workers finish their requests in flight (at most a second) and
  exit: a worker with a request that its backend answers after 5 s exits no sooner than a
  second after the master's death and before 1.5 s, its idle sibling at once.

The upper bounds leave half a second for a loaded machine; the lower ones tell a deadline
kept from an answer given early.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.ports import HOST
from testkit.processes import alive
from testkit.protocol import PolicyClient, request
from testkit.spawn import Spawned
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

from hapolicy.daemon.worker import ORPHAN_GRACE

TOTAL = 2.0
SLACK = 0.5
DEFAULT = "action=DEFER_IF_PERMIT deadline\n\n"


def timed(client: PolicyClient, data: bytes) -> tuple[str, float]:
    started = time.monotonic()
    answer = client.ask(data, timeout=30)
    return answer, time.monotonic() - started


@pytest.fixture
def silent_pair():
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2:
        yield [s1.spec("S1", timeout=30), s2.spec("S2", prio=20, timeout=30)]


def test_the_daemon_answers_the_default_at_the_total_deadline(silent_pair):
    with Daemon("-s", silent_pair[0], "-s", silent_pair[1], "--total-timeout", f"{TOTAL:g}",
                "-d", "DEFER_IF_PERMIT deadline", workers=1) as daemon:
        with PolicyClient(HOST, daemon.port) as client:
            for attempt in ("first", "every service marked down"):
                answer, took = timed(client, request())
                assert answer == DEFAULT, attempt
                assert TOTAL <= took < TOTAL + SLACK, (attempt, took)
        wait_for(lambda: "total timeout 2s reached" in daemon.log.text(), 5)


def test_spawn_mode_answers_the_default_at_the_total_deadline(silent_pair):
    syslog = SyslogReceiver()
    try:
        with Spawned(["--syslog-socket", syslog.path, "-s", silent_pair[0], "-s",
                      silent_pair[1], "--total-timeout", f"{TOTAL:g}",
                      "-d", "DEFER_IF_PERMIT deadline"]) as proc:
            # an empty request is answered at once: the process has started
            assert proc.ask(b"\n", timeout=20) == DEFAULT
            answer, took = timed(proc.client, request())
            assert answer == DEFAULT
            assert TOTAL <= took < TOTAL + SLACK, took
    finally:
        syslog.close()


@pytest.mark.parametrize("delay", [0.5, 5.0])
def test_an_orphaned_worker_finishes_within_a_second_of_the_masters_death(delay):
    """Its request in flight is answered when the backend answers within the grace (0.5 s),
    and given up with its connection when it does not (5 s); the worker exits then, never
    later than ORPHAN_GRACE after the master's death; its idle sibling at once."""
    with FakeBackend(action="LATE", delay=delay) as slow, \
            Daemon("-s", slow.spec("S"), workers=2) as daemon:
        workers = daemon.wait_ready()
        with PolicyClient(HOST, daemon.port) as client:
            client.send_raw(request())
            assert slow.wait_requests(1, 5)
            os.kill(daemon.pid, signal.SIGKILL)
            killed = time.monotonic()
            daemon.proc.wait(5)
            exits: dict[int, float] = {}

            def all_exited() -> bool:
                for pid in workers:
                    if pid not in exits and not alive(pid):
                        exits[pid] = time.monotonic() - killed
                return len(exits) == len(workers)

            wait_for(all_exited, 5, interval=0.01, what="the orphaned workers to exit")
            slowest, fastest = max(exits.values()), min(exits.values())
            assert fastest < SLACK, exits  # the idle one has nothing to finish
            assert ORPHAN_GRACE == 1.0  # docs/operating.md: "(at most a second)"
            done = min(delay, ORPHAN_GRACE)
            assert done - 0.1 <= slowest < done + SLACK, exits
            if delay < ORPHAN_GRACE:
                assert client.read_answer(5) == "action=LATE\n\n"
            assert client.read_until_eof(5) == b""
        assert "master is gone" in daemon.log.text()
