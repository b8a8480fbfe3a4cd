"""End to end: a real Postfix smtpd asks the hapolicy daemon (check_policy_service
inet:127.0.0.1:PORT), which asks a real postfwd2 with a rule rejecting bad@example.org.

The REJECT text reaches the SMTP client at RCPT TO for the bad sender, a good sender gets
250, and with postfwd stopped Postfix gets hapolicy's default action; when postfwd comes
back, its answers do too.
"""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.packages import require_packages
from testkit.postfix import PostfixInstance, Postfwd, requires_root, smtp_rcpt
from testkit.wait import wait_for

RULES = "id=R1; sender==bad@example.org; action=REJECT go away\n"
RCPT = "someone@example.net"


@pytest.fixture(scope="module", autouse=True)
def packages():
    if os.geteuid() == 0:  # as root (CI): a missing package fails in CI, skips elsewhere
        require_packages("postfix", "postfwd")


@requires_root
def test_postfix_through_hapolicy_daemon_to_postfwd(tmp_path: Path):
    with Postfwd(tmp_path, RULES) as postfwd, \
            Daemon("-s", f"PF=127.0.0.1:{postfwd.port}:10:1:10", "-l",
                   "-d", "DEFER policy service down", "--cooldown", "0.5", "--cooldown-max", "1",
                   workers=2) as daemon, \
            PostfixInstance(tmp_path,
                            policy=f"check_policy_service inet:127.0.0.1:{daemon.port}") as mx:
        code, text = smtp_rcpt(mx.smtpd_port, "bad@example.org", RCPT)
        assert code == 554 and "go away" in text, (code, text)
        code, text = smtp_rcpt(mx.smtpd_port, "good@example.org", RCPT)
        assert code == 250, (code, text)
        log = daemon.log.wait_text("action=REJECT go away")
        assert "service=PF" in log and "sender=<bad@example.org>" in log

        postfwd.stop()
        code, text = smtp_rcpt(mx.smtpd_port, "bad@example.org", RCPT)
        assert code == 450 and "policy service down" in text, (code, text)
        code, text = smtp_rcpt(mx.smtpd_port, "good@example.org", RCPT)
        assert code == 450 and "policy service down" in text, (code, text)
        daemon.log.wait('default="all services failed"')

        postfwd.start()
        wait_for(lambda: smtp_rcpt(mx.smtpd_port, "bad@example.org", RCPT)[0] == 554, 15,
                 interval=0.5, what="postfwd's answers to come back")
        assert smtp_rcpt(mx.smtpd_port, "good@example.org", RCPT)[0] == 250
        assert "warning: problem talking to server" not in mx.log_text()
        assert daemon.stop() == 0
        daemon.assert_clean_output()


@requires_root
@pytest.mark.parametrize("checks", ["5", "0"])
def test_postfix_gets_the_default_at_once_when_every_backend_hangs(tmp_path: Path, checks: str):
    """Both backends hung (accept, never answer), TIMEOUT 1 each: the first RCPT pays both
    timeouts (with the default checks, at most: they may have found them dead before it),
    every later one, in this session and the next, is answered with the default at once."""
    with FakeBackend(mode="silent") as s1, FakeBackend(mode="silent") as s2, \
            Daemon("-s", s1.spec("S1", prio=10, timeout=1), "-s", s2.spec("S2", prio=20, timeout=1),
                   "-d", "DEFER_IF_PERMIT policy service unavailable",
                   "--check-interval", checks, workers=2) as daemon, \
            PostfixInstance(tmp_path,
                            policy=f"check_policy_service inet:127.0.0.1:{daemon.port}") as mx:
        times = []
        for session in range(2):
            with smtplib.SMTP("127.0.0.1", mx.smtpd_port, timeout=60) as smtp:
                smtp.ehlo("client.example.org")
                assert smtp.mail(f"s{session}@example.org")[0] == 250
                for n in range(6):
                    started = time.monotonic()
                    code, text = smtp.rcpt(f"r{n}@example.net")
                    times.append(time.monotonic() - started)
                    assert code == 450 and b"policy service unavailable" in text, (code, text)
        assert (2.0 if checks == "0" else 0.0) <= times[0] < 2.5, times
        assert max(times[1:]) < 0.3, times
        print(f"figure: postfix, all hung, checks {checks}: first RCPT {times[0]:.4f}s, "
              f"next {len(times) - 1} max {max(times[1:]):.4f}s")  # shown with pytest -s
        assert len(s1.live_requests) <= 1 and len(s2.live_requests) <= 1
        daemon.log.wait("no service answered (all services down)")
