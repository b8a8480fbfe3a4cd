"""End to end, a real Postfix under load while the hapolicy daemon in front of two postfwd2 is
upgraded in place (SIGUSR2), or restarted (SIGTERM, then started again) for comparison.

16 SMTP client threads send RCPTs for 20 s (testkit/smtpload.py: sessions of 50 RCPTs, 30 ms
between a reply and the next RCPT, about 450 RCPTs/s on two cores, which leaves the machine
some room: a stall seen is the policy client's, not the CPU's), each timed with its reply; at
the middle the daemon is upgraded or restarted. Postfix closes a policy connection 12 s after
it opened it (smtpd_policy_service_max_ttl; between SMTP sessions): at the USR2 every one of
its connections is an old worker's, in use, and 2 to 4 s later they move to the new master's
workers and the old master retires while Postfix runs (with Postfix's default, 1000 s, the old
workers would serve until then or until Postfix stops). in_flow_delay is 0: the sessions never
send DATA, so the queue manager never hands out the tokens that let cleanup accept at once,
and every new transaction would wait 1 s for one.

* Upgrade: every RCPT gets 250, none takes over 1 s, Postfix never logs "problem talking to
  server"; the old master logs the new master's pid; the new master's workers serve
  connections, the old master and its workers exit once Postfix left them: mostly during the
  run; if not, once Postfix stops. An idle smtpd waits in flock() for its turn to accept (the
  accept lock of Postfix's single_server), and its timers, max_ttl and max_idle, run only in
  its turn: its policy connection stays open until then, up to 100 s (max_idle) for each smtpd
  before it in the queue.
* Restart: the figures only (what a stop + start costs Postfix: its policy client sleeps
  smtpd_policy_service_retry_delay, 1 s, after a refused or closed connection).

Each prints one line of figures in the same shape, then one of timings (pytest -s shows them).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from testkit.daemon import Daemon
from testkit.packages import require_packages
from testkit.ports import HOST
from testkit.postfix import PostfixInstance, Postfwd, requires_root
from testkit.processes import alive, kill_session, served_connections, wait_children, wait_exit
from testkit.smtpload import PROBLEM, SmtpLoad, figures
from testkit.wait import wait_for

RULES = "id=R1; sender==bad@example.org; action=REJECT go away\n"
SECONDS = 20.0  # of load
MIDDLE = 10.0  # when the daemon is upgraded or restarted
PAUSE = 0.03  # after each RCPT's reply, in each client thread
WORKERS = 4
TTL = 12  # smtpd_policy_service_max_ttl: > MIDDLE, so that at the USR2 each of Postfix's
# policy connections is one it opened at its start, to an old worker, and busy
UPGRADED = re.compile(r"upgrade: new master (\d+) serves; (\d+) old workers retire")
FAILED = "upgrade failed"


@pytest.fixture(scope="module", autouse=True)
def packages():
    if os.geteuid() == 0:  # as root (CI): a missing package fails in CI, skips elsewhere
        require_packages("postfix", "postfwd")


def _daemon(backends: list[Postfwd], output: Path, listen: str | None = None) -> Daemon:
    services = [arg for n, pf in enumerate(backends)
                for arg in ("-s", f"PF{n}={HOST}:{pf.port}:10:1:10")]
    return Daemon(*services, "-d", "DEFER policy service down", workers=WORKERS,
                  listen=listen, output=output, new_session=True)


@contextmanager
def _mail_host(tmp_path: Path) -> Iterator[tuple[list[Postfwd], Daemon, PostfixInstance]]:
    """Two postfwd2, the daemon in front of them (in a session of its own: whatever it starts
    is killed at the end), Postfix asking the daemon."""
    with Postfwd(tmp_path, RULES) as pf1, Postfwd(tmp_path, RULES) as pf2:
        daemon = _daemon([pf1, pf2], tmp_path / "daemon.out")
        try:
            daemon.start()
            policy = f"check_policy_service inet:{HOST}:{daemon.port}"
            main = f"smtpd_policy_service_max_ttl = {TTL}s\nin_flow_delay = 0s\n"
            with PostfixInstance(tmp_path, policy=policy, main_extra=main) as mx:
                yield [pf1, pf2], daemon, mx
        finally:
            kill_session(daemon.pid)
            daemon.close()


def _until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _upgrade(daemon: Daemon) -> tuple[int, int]:
    """SIGUSR2 to the master; (the new master's pid, the old workers retiring) from its log."""
    daemon.send(signal.SIGUSR2)

    def said() -> str | None:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"the master exited ({daemon.proc.returncode}) on SIGUSR2:\n"
                                 f"{daemon.log.text()}\n{daemon.output_text()}")
        return next((line for line in daemon.log.lines
                     if UPGRADED.search(line) or FAILED in line), None)

    line = wait_for(said, 15, what="the master's upgrade line")
    found = UPGRADED.search(line)
    assert found, line
    return int(found[1]), int(found[2])


def _timings(daemon: Daemon, old_master: int, signalled: float, postfix_ran: bool) -> str:
    serves = daemon.log.matching("upgrade: new master")[0][0] - signalled
    stopped = daemon.log.matching(f"[{old_master}]: master stopped")
    when = f"{stopped[0][0] - signalled:.2f} s after" if stopped else "(not logged)"
    return (f"upgrade: the new master served {serves:.2f} s after USR2, the old one stopped "
            f"{when}, {'while Postfix ran' if postfix_ran else 'once Postfix stopped'}")


@requires_root
def test_usr2_upgrade_under_postfix_load_costs_postfix_nothing(tmp_path: Path):
    with _mail_host(tmp_path) as (_, daemon, mx):
        old_master, old_workers = daemon.pid, daemon.workers_now()
        with SmtpLoad(mx.smtpd_port, pause=PAUSE) as load:
            start = time.monotonic()
            _until(start + MIDDLE)
            signalled = time.monotonic()
            new_master, retiring = _upgrade(daemon)
            assert new_master != old_master and retiring == len(old_workers)
            new_workers = wait_children(new_master, WORKERS)
            _until(start + SECONDS - 1)
            served = served_connections(daemon.port, new_workers)
            _until(start + SECONDS)
        postfix_ran = daemon.proc.poll() is not None
        if not postfix_ran:  # an idle smtpd may still hold an old worker's connection
            mx.stop()
        exited = wait_exit(daemon.proc, 20)
        maillog = mx.log_text()
        print(f"\n{figures('upgrade', load.rcpts, maillog)}")
        print(_timings(daemon, old_master, signalled, postfix_ran))
        assert exited is not None, daemon.log.text()
        assert not any(alive(pid) for pid in old_workers)
        assert served > 0  # Postfix's new connections went to the new master's workers
        assert load.errors == [], load.errors[:5]
        assert len(load.rcpts) > 1000, len(load.rcpts)
        bad = [r for r in load.rcpts if r.code != 250 or r.seconds > 1.0]
        assert bad == [], bad[:10]
        assert PROBLEM not in maillog
        assert alive(new_master) and wait_children(new_master, WORKERS) == new_workers
        os.kill(new_master, signal.SIGTERM)
        wait_for(lambda: not alive(new_master), 20, what="the new master's exit")
        assert "Traceback" not in daemon.log.text() + daemon.output_text()


@requires_root
def test_restart_under_postfix_load_figures(tmp_path: Path):
    with _mail_host(tmp_path) as (backends, daemon, mx):
        with SmtpLoad(mx.smtpd_port, pause=PAUSE) as load:
            start = time.monotonic()
            _until(start + MIDDLE)
            signalled = time.monotonic()
            assert daemon.stop() == 0
            stopped = time.monotonic()
            again = _daemon(backends, tmp_path / "again.out", listen=daemon.listen)
            try:
                again.start()
                serves = time.monotonic()
                _until(start + SECONDS)
            finally:
                load.stop()
                again.close()
        print(f"\n{figures('restart', load.rcpts, mx.log_text())}")
        print(f"restart: the old master stopped {stopped - signalled:.2f} s after TERM, the new "
              f"one served {serves - signalled:.2f} s after")
        assert len(load.rcpts) > 1000, len(load.rcpts)
        assert sum(1 for r in load.rcpts if r.code == 250) > len(load.rcpts) / 2
