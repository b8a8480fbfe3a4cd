"""--max-idle closes connections that stopped mid-request or never read, not only idle ones."""

from __future__ import annotations

import socket

from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.protocol import PolicyClient, request


def test_max_idle_closes_a_half_sent_request_and_keeps_a_live_client():
    with FakeBackend() as backend, Daemon("-s", backend.spec("B"), "--max-idle", "1",
                                          workers=1) as daemon:
        stuck = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        stuck.sendall(b"request=smtpd_access_policy\nsender=")
        with PolicyClient("127.0.0.1", daemon.port) as live:
            for _ in range(10):  # asks every 0.5 s: never idle for a whole second
                assert live.ask(request()) == "action=DUNNO\n\n"
                stuck.settimeout(0.5)
                try:
                    data = stuck.recv(100)
                except socket.timeout:
                    continue
                assert data == b""  # closed by the idle guard, without an answer
                break
            else:
                raise AssertionError("the half-sent request was never closed")
        stuck.close()
