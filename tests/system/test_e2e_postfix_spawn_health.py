"""End to end: under a real Postfix's spawn(8), a blackholed service costs its connect timeout
once per cool-down for the whole server, not once per SMTP connection.

A spawn(8) entry runs our hapolicy as nobody with /usr/bin/python3 (a world-readable, compiled
copy, as a system-wide install is), `--connect-timeout 1 --cooldown 4 --cooldown-max 4`, a
PRIMARY service (priority 1) at an address where connect() never completes and a FALLBACK
(priority 2) that answers. `smtpd_policy_service_request_limit = 1` makes smtpd open a
new policy connection, hence spawn a new hapolicy process, for every request: each SMTP
session below is answered by a new process, which the fallback sees as a new connection.
The processes share health through the default state file, /tmp/hapolicy-65534/ (nobody has
no XDG_RUNTIME_DIR under spawn(8)).

* The first session's RCPT waits for the connect timeout (about 1 s); the next ten, each
  a new process, are answered at once.
* After the cool-down, of three sessions at once one probes PRIMARY (about 1 s), the others
  are answered at once.
* PRIMARY answers again: after the cool-down the next session probes it and is answered by
  it, and so are the sessions after.

"At once" is under 0.5 s against the 1 s timeout. The delays are printed (pytest -s).
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.packages import require_packages
from testkit.ports import HOST, free_port
from testkit.postfix import PostfixInstance, requires_root, spawn_entry
from testkit.public import world_readable_copy
from testkit.repo import REPO
from testkit.stubs import Blackhole
from testkit.syslog import SyslogReceiver

from hapolicy.config.records import parse_service
from hapolicy.spawn import statefile

pytestmark = requires_root

COOLDOWN = 4.0
AT_ONCE = 0.5
RECIPIENT = "someone@example.net"


class World:
    """The blackhole, the fallback, a syslog socket nobody may write to, and Postfix."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hole = Blackhole()
        self.fallback = FakeBackend(action="DUNNO fallback", name="fallback")
        self.primary: FakeBackend | None = None
        self.public = Path(tempfile.mkdtemp(prefix="hapolicy-e2e-", dir="/tmp"))
        self.public.chmod(0o755)
        self.syslog: SyslogReceiver | None = None
        self.postfix: PostfixInstance | None = None
        self.state = ""

    def start(self) -> None:
        require_packages("postfix", "python3")
        self.hole.start()
        self.fallback.start()
        self.syslog = SyslogReceiver(self.public / "log")
        pypath = world_readable_copy(REPO / "hapolicy", self.tmp / "pkg", "/usr/bin/python3")
        services = [f"PRIMARY={HOST}:{self.hole.port}:1", f"FALLBACK={HOST}:{self.fallback.port}:2"]
        nobody = pwd.getpwnam("nobody").pw_uid
        self.state = statefile.default_path([parse_service(s) for s in services], {}, nobody)
        self.remove_state()  # a file of an earlier run with the same ports would be used
        argv = ["/usr/bin/env", f"PYTHONPATH={pypath}", "/usr/bin/python3", "-m", "hapolicy",
                "--syslog-socket", str(self.syslog.path), "--connect-timeout", "1",
                "--cooldown", f"{COOLDOWN:g}", "--cooldown-max", f"{COOLDOWN:g}",
                *(a for s in services for a in ("-s", s))]
        port = free_port()
        self.postfix = PostfixInstance(
            self.tmp, policy=f"check_policy_service inet:{HOST}:{port}",
            master_extra=spawn_entry(port, argv),
            main_extra=(f"{HOST}:{port}_time_limit = 3600\n"
                        "smtpd_policy_service_timeout = 20s\n"
                        "smtpd_policy_service_request_limit = 1\n"))
        self.postfix.start()

    def heal(self) -> None:
        """PRIMARY listens and answers on the blackhole's port."""
        port = self.hole.port
        self.hole.stop()
        self.primary = FakeBackend(action="DUNNO primary", name="primary", port=port).start()

    def remove_state(self) -> None:
        try:
            os.unlink(self.state)
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
        for backend in (self.primary, self.fallback):
            if backend is not None:
                backend.stop()
        self.hole.stop()
        if self.syslog is not None:
            self.syslog.close()
        shutil.rmtree(self.public, ignore_errors=True)
        self.remove_state()

    def session(self) -> tuple[int, float]:
        """One SMTP session; (RCPT reply code, seconds the RCPT took: our process's start and
        answer, since smtpd asks the policy service at RCPT)."""
        assert self.postfix is not None
        with smtplib.SMTP(HOST, self.postfix.smtpd_port, local_hostname="client.example.org",
                          timeout=60) as smtp:
            smtp.ehlo("client.example.org")
            assert smtp.mail("good@example.org")[0] == 250
            begin = time.monotonic()
            code, _ = smtp.rcpt(RECIPIENT)
            return code, time.monotonic() - begin

    def sessions_at_once(self, count: int) -> list[tuple[int, float]]:
        results: list[tuple[int, float]] = []
        threads = [threading.Thread(target=lambda: results.append(self.session()))
                   for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return sorted(results, key=lambda r: r[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("e2e_spawn_health"))
    try:
        w.start()
        yield w
    finally:
        w.stop()


def test_a_blackholed_service_costs_one_timeout_per_cool_down_for_all_sessions(world) -> None:
    code, first = world.session()
    found_dead = time.monotonic()
    assert code == 250 and 1.0 <= first < 3.0, first
    connections = world.fallback.connections
    next_ten = [world.session() for _ in range(10)]
    print(f"\nblackholed PRIMARY, connect timeout 1 s: first session {first:.3f} s; next ten "
          + " ".join(f"{t:.3f}" for _, t in next_ten) + " s")
    assert time.monotonic() - found_dead < COOLDOWN, "the ten sessions outlasted the cool-down"
    assert all(code == 250 and t < AT_ONCE for code, t in next_ten), next_ten
    assert world.fallback.connections - connections == 10  # ten new processes
    assert len(world.fallback.requests) == 11

    # the cool-down is over: one of three sessions at once probes PRIMARY, still dead
    time.sleep(max(0.0, found_dead + COOLDOWN + 0.2 - time.monotonic()))
    probed = world.sessions_at_once(3)
    probe_done = time.monotonic()
    print("after the cool-down, three sessions at once: "
          + " ".join(f"{t:.3f}" for _, t in probed) + " s")
    assert [code for code, _ in probed] == [250] * 3
    assert probed[0][1] < AT_ONCE and probed[1][1] < AT_ONCE and probed[2][1] >= 1.0, probed

    # PRIMARY answers again: the first session after the cool-down probes it, and it stays
    world.heal()
    time.sleep(max(0.0, probe_done + COOLDOWN + 0.2 - time.monotonic()))
    healed = [world.session() for _ in range(3)]
    print("PRIMARY back, after the cool-down: " + " ".join(f"{t:.3f}" for _, t in healed) + " s")
    assert all(code == 250 and t < AT_ONCE for code, t in healed), healed
    assert world.primary is not None and len(world.primary.requests) == 3
    assert len(world.fallback.requests) == 14

    assert world.syslog is not None
    lines = world.syslog.wait_for(lambda ls: any("service PRIMARY" in line and line.endswith(" up")
                                                 for line in ls))
    downs = [line for line in lines if "service PRIMARY" in line and " down: " in line]
    assert len(downs) == 1 and "connect timeout after 1.0s" in downs[0], downs
    assert not any("health table of its own" in line or "state file" in line for line in lines)
    st = os.lstat(world.state)
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_mode & 0o777 == 0o600
