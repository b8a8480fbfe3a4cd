"""A request with a line that is not an attribute (no `=`) is refused with the default answer and
never reaches a service (issue 27, finding 9): Postfix never sends one, and a service would
parse it in its own way. On both ways a daemon's request can take: the lane (a pool that only
relays: lane.py) and the general path (a pool that hashes), each after a good request (the
lane needs an idle connection to take a request). The refusal is counted as `refused` and
logged; the connection goes on.
"""

from __future__ import annotations

import pytest
from test_metrics import samples, total
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, request

GARBAGE = [
    b"request=smtpd_access_policy\nthis line has no equals sign\nsender=a@example.org\n\n",
    b"no equals sign first\nrequest=smtpd_access_policy\n\n",
    b"request=smtpd_access_policy\n\t\n\n",  # a line of a TAB only
]


@pytest.mark.parametrize("balance", ["weighted", "hash:client_address/24"],
                         ids=["lane", "general"])
def test_a_line_without_equals_is_refused_on_every_path(balance):
    mport = free_port()
    with FakeBackend(action="OK") as backend:
        daemon = Daemon("-s", backend.spec("A"), "--balance", balance, "--check-interval", "0",
                        "--metrics-listen", f"{HOST}:{mport}", workers=1)
        with daemon.start(), PolicyClient(HOST, daemon.port) as client:
            for garbage in GARBAGE:
                assert client.ask(request()) == "action=OK\n\n"
                assert client.ask(garbage) == "action=dunno\n\n"
            assert client.ask(request()) == "action=OK\n\n"
            assert len(backend.raw_requests) == len(GARBAGE) + 1
            assert all(b"=" in line for raw in backend.raw_requests
                       for line in raw.split(b"\n")[:-2])
            found = samples(mport)
            assert total(found, "hapolicy_default_answers_total", reason="refused") == 3
            assert "request refused: a line without `=`, answering action=dunno" in \
                daemon.log.text()
