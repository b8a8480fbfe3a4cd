"""An exception while handling one request costs that request, never a worker and its clients
(issue 27, finding 2), against a live daemon with one worker.

A NUL byte in an address hashed with a mask (`balance = hash:client_address/24`, the manual's
postgrey recommendation) once killed the worker with every client on it. Now that value is not
an address (hashed as it is); and any other exception while handling a request is contained:
this test makes one happen in the daemon without a hook in hapolicy, through a
`sitecustomize` module on the daemon's PYTHONPATH that makes the hash key raise for one client
address. That request gets the default answer; a client on the same worker, connected before,
goes on being answered by the service; the worker is the same process; the log has one line
that names the exception; csv, status and /metrics count it.
"""

from __future__ import annotations

import textwrap

from test_metrics import samples, total
from testkit.backends import FakeBackend
from testkit.ctl import csv_rows, ctl
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, hapolicy_env
from testkit.wait import wait_for

POISON = "192.0.2.66"  # the client address whose hash key raises in the daemon
FAULT = f"""\
import hapolicy.request.hashkey as hashkey

_mask_address = hashkey.mask_address


def mask_address(value, v4, v6):
    if value == b"{POISON}":
        raise RuntimeError("injected fault")
    return _mask_address(value, v4, v6)


hashkey.mask_address = mask_address
"""
LOOP_FAULT = """\
import hapolicy.base.protocol as protocol

_whole = protocol.RequestFramer.whole


def whole(self, data):
    if b"loopfault" in data:
        raise RuntimeError("fault outside the request path")
    return _whole(self, data)


protocol.RequestFramer.whole = whole
"""


def test_a_nul_in_a_hashed_address_is_answered_and_costs_no_bystander():
    with FakeBackend(action="OK hashed", name="A") as a:
        daemon = Daemon("-s", a.spec("A"), "--balance", "hash:client_address/24",
                        "--check-interval", "0", workers=1)
        with daemon.start(), PolicyClient(HOST, daemon.port) as bystander, \
                PolicyClient(HOST, daemon.port) as attacker:
            assert bystander.ask(request()) == "action=OK hashed\n\n"
            for _ in range(5):
                answer = attacker.ask(request(client_address="192.0.2.1\0"))
                assert answer == "action=OK hashed\n\n"
            assert bystander.ask(request()) == "action=OK hashed\n\n"
            assert daemon.workers_now() == daemon.pids
            assert "internal error" not in daemon.log.text()


def test_an_exception_while_handling_a_request_costs_that_request_only(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(FAULT))
    env = hapolicy_env()
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    mport = free_port()
    with FakeBackend(action="OK hashed", name="A") as a:
        daemon = Daemon("-s", a.spec("A"), "--balance", "hash:client_address/24",
                        "--check-interval", "0", "--metrics-listen", f"{HOST}:{mport}",
                        workers=1, env=env)
        control = str(daemon.dir / "control")
        daemon.args += ["--control", control]
        with daemon.start(), PolicyClient(HOST, daemon.port) as bystander, \
                PolicyClient(HOST, daemon.port) as victim:
            assert bystander.ask(request()) == "action=OK hashed\n\n"
            for _ in range(3):
                assert victim.ask(request(client_address=POISON)) == "action=dunno\n\n"
                assert bystander.ask(request()) == "action=OK hashed\n\n"
            # the same connection goes on: the next request of the victim is answered
            assert victim.ask(request()) == "action=OK hashed\n\n"
            assert daemon.workers_now() == daemon.pids
            lines = daemon.log.wait_for(lambda ls: any("internal error" in x for x in ls))
            errors = [x for x in lines if "internal error" in x]
            assert "internal error while answering a request (RuntimeError: injected fault at " \
                   "sitecustomize.py:" in errors[0] and errors[0].endswith("action=dunno"), errors
            assert len(errors) <= 2, errors  # the first at once, the others held as one line
            assert "worker internal error" not in daemon.log.text()
            assert csv_rows(control)["default/A"]["internal_errors"] == "3"
            status = ctl("--control", control, "status").stdout.splitlines()
            assert status[0].split()[-1] == "internal_errors" and status[1].split()[-1] == "3"
            found = samples(mport)
            assert total(found, "hapolicy_default_answers_total", reason="internal") == 3
            assert total(found, "hapolicy_requests_total") == 8
            assert daemon.stop() == 0


def test_an_exception_outside_a_requests_containment_retires_the_worker_not_its_clients(
        tmp_path):
    """The event loop contains it: the worker logs it, goes on serving its clients, and
    retires (its state may be spoilt), so a new worker takes the new connections."""
    (tmp_path / "sitecustomize.py").write_text(LOOP_FAULT)
    env = hapolicy_env()
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    with FakeBackend(action="OK", name="A") as a:
        # a pool that hashes: its reads are framed by RequestFramer.whole (no lane)
        daemon = Daemon("-s", a.spec("A"), "--balance", "hash:client_address",
                        "--check-interval", "0", workers=1, env=env)
        with daemon.start(), PolicyClient(HOST, daemon.port) as bystander:
            assert bystander.ask(request()) == "action=OK\n\n"
            with PolicyClient(HOST, daemon.port) as faulty:
                faulty.send_raw(request(sender="loopfault@example.org"))
                text = daemon.log.wait_text("retiring after an internal error")
            assert "worker internal error, contained: RuntimeError: fault outside the " \
                   "request path at sitecustomize.py:" in text
            assert bystander.ask(request()) == "action=OK\n\n"  # the old worker serves it
            [old] = daemon.pids
            wait_for(lambda: len([p for p in daemon.workers_now() if p != old]) == 1, 10,
                     what="the new worker")
            with PolicyClient(HOST, daemon.port) as newcomer:
                assert newcomer.ask(request()) == "action=OK\n\n"
            assert "died" not in daemon.log.text()
