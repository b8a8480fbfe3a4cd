"""The upgrade's handover (daemon/handover.py) and the old master's side of it (upgrade.py), in
process: the document round-trips with real sockets; what the new master says reaches the old
one; a bad variable, descriptor or document is one HandoverError line (never another
exception, whatever the bytes: Hypothesis); and an Upgrade's outcome from a stand-in program
that says ready, fails with a message, dies at once, or never serves.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testkit.daemon import short_tmpdir

from hapolicy.base.eventloop import EventLoop
from hapolicy.daemon import upgrade
from hapolicy.daemon.handover import (
    ENVIRONMENT,
    LISTEN,
    READY,
    Handover,
    HandoverError,
    write_document,
)
from hapolicy.daemon.upgrade import FAILING, SERVING, STARTING, Upgrade


def listening(family: int = socket.AF_INET, path: str = "") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(path or ("127.0.0.1", 0))
    sock.listen(8)
    return sock


def handover_of(document: dict) -> Handover | None:
    return Handover.from_environ({ENVIRONMENT: str(write_document(document))})


def test_the_document_round_trips_with_its_sockets_and_the_status_pipe():
    path = str(short_tmpdir() / "s")
    inet, unix, control = listening(), listening(socket.AF_UNIX, path), listening(
        socket.AF_UNIX, path + "c")
    status_r, status_w = os.pipe()
    document = {"from": 77, "status": status_w, "stderr": os.dup(2), "tables": {"x": 1},
                "sockets": [
                    {"fd": os.dup(inet.fileno()), "role": "listen", "address": "a",
                     "systemd": True},
                    {"fd": os.dup(unix.fileno()), "role": "listen", "address": "b",
                     "identity": [1, 2]},
                    {"fd": os.dup(control.fileno()), "role": "control",
                     "address": path + "c"}]}  # as the new program has them: its own
    env = {ENVIRONMENT: str(write_document(document)), "OTHER": "1"}
    handover = Handover.from_environ(env)
    assert env == {"OTHER": "1"}  # the variable is not passed on
    assert handover.from_pid == 77 and handover.tables == {"x": 1}
    listeners = handover.listeners()
    assert [(h.role, h.systemd, h.identity) for h in listeners] == [
        (LISTEN, True, None), (LISTEN, False, (1, 2))]
    assert listeners[0].sock.getsockname() == inet.getsockname()
    assert handover.take("control", path + "c") is not None
    assert handover.take("metrics", "127.0.0.1:1") is None
    listeners[0].take()
    assert handover.untaken() == ["listen b"]
    handover.ready()
    handover.failed("too late: said once only")
    assert os.read(status_r, 100) == READY
    assert os.read(status_r, 100) == b""  # closed after its one message
    handover.restore_stderr()
    for sock in (inet, unix, control, listeners[0].sock, handover.handed[2].sock):
        sock.close()


def test_failed_says_one_line_why():
    status_r, status_w = os.pipe()
    handover = Handover(1, status_w, -1, [], None)
    handover.failed("cannot listen on 127.0.0.1:25:\nAddress in use")
    assert os.read(status_r, 200) == b"failed cannot listen on 127.0.0.1:25: Address in use\n"


def test_no_variable_is_no_handover():
    assert Handover.from_environ({}) is None


@pytest.mark.parametrize("value, why", [
    ("three", "expected a descriptor"),
    ("987654", "cannot read descriptor 987654"),
])
def test_a_bad_variable_is_one_line(value, why):
    with pytest.raises(HandoverError, match=why):
        Handover.from_environ({ENVIRONMENT: value})


def test_what_is_not_a_listening_socket_of_its_role_is_one_line():
    with open(os.devnull) as devnull, socket.socket() as unbound, listening() as inet:
        cases = [(devnull.fileno(), "listen", "is not a socket"),
                 (unbound.fileno(), "listen", "is not a listening stream socket of the listen kind"),
                 (inet.fileno(), "control", "is not a listening stream socket of the control kind")]
        for fd, role, why in cases:
            document = {"from": 1, "status": 1, "stderr": 2,
                        "sockets": [{"fd": fd, "role": role, "address": "x"}]}
            with pytest.raises(HandoverError, match=why):
                handover_of(document)


@given(st.binary(max_size=300) | st.builds(
    lambda d: json.dumps(d).encode(),
    st.dictionaries(st.sampled_from(["from", "status", "stderr", "sockets", "tables"]),
                    st.none() | st.integers(-2, 2) | st.text(max_size=3)
                    | st.lists(st.dictionaries(st.sampled_from(["fd", "role", "address",
                                                                "identity", "systemd"]),
                                               st.integers(-1, 1) | st.text(max_size=7)
                                               | st.lists(st.integers(), max_size=3)),
                               max_size=2))))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_a_handover_or_one_handover_error(data):
    fd = os.memfd_create("t", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        Handover.from_environ({ENVIRONMENT: str(fd)})
    except HandoverError as exc:
        assert "\n" not in str(exc)


STAND_IN = """
import json, os, sys, time
document = json.loads(os.read(int(os.environ["HAPOLICY_UPGRADE"]), 1 << 20))
what = sys.argv[1]
if what == "ready":
    os.write(document["status"], b"ready\\n")
    time.sleep(5)
elif what == "ready-exit":
    os.write(document["status"], b"ready\\n")
    sys.exit(70)
elif what == "failed":
    os.write(document["status"], b"failed cannot listen on 127.0.0.1:1: in use\\n")
    sys.exit(1)
elif what == "crash":
    sys.stderr.write("Traceback (most recent call last):\\nImportError: no module x\\n")
    sys.exit(1)
else:
    time.sleep(30)
"""


def run_upgrade(monkeypatch, tmp_path, what: str, timeout: float = 10.0) -> Upgrade:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(upgrade, "program", lambda: [sys.executable, str(script), what])
    loop = EventLoop()
    with listening() as sock:
        started = Upgrade.start({"from": os.getpid(), "sockets": []}, [sock.fileno()],
                                str(tmp_path), loop, time.monotonic())
    end = time.monotonic() + timeout
    while started.outcome == STARTING and time.monotonic() < end:
        loop.run_once(0.05)
        pid, status = os.waitpid(started.pid, os.WNOHANG)
        if pid:
            started.exited(os.waitstatus_to_exitcode(status))
        started.check(time.monotonic())
    return started


def test_an_upgrade_whose_program_says_ready_serves(monkeypatch, tmp_path):
    started = run_upgrade(monkeypatch, tmp_path, "ready")
    assert started.outcome == SERVING
    os.kill(started.pid, 9)
    os.waitpid(started.pid, 0)
    started.close()


@pytest.mark.parametrize("what, why", [
    ("failed", "new master {pid}: cannot listen on 127.0.0.1:1: in use"),
    ("ready-exit", "new master {pid} exited with status 70"),
    ("crash", "new master {pid} exited with status 1: ImportError: no module x"),
])
def test_an_upgrade_whose_program_fails_says_why(monkeypatch, tmp_path, what, why):
    started = run_upgrade(monkeypatch, tmp_path, what)
    assert started.outcome == FAILING
    assert started.why == why.format(pid=started.pid)
    started.close()


def test_an_upgrade_that_does_not_serve_in_time_is_killed(monkeypatch, tmp_path):
    monkeypatch.setattr(upgrade, "UPGRADE_TIMEOUT", 0.5)
    started = run_upgrade(monkeypatch, tmp_path, "hang")
    assert started.outcome == FAILING
    assert started.why == f"new master {started.pid} did not serve within 0s: killed"
    assert os.waitpid(started.pid, 0)[1] == 9  # SIGKILL
    started.close()


def test_a_program_that_cannot_run_fails_at_once_and_leaves_nothing_open(monkeypatch):
    monkeypatch.setattr(upgrade, "program", lambda: ["/nonexistent/hapolicy"])
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        Upgrade.start({"from": 1, "sockets": []}, [], "/", EventLoop(), 0.0)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_the_program_is_the_script_when_it_is_one_else_the_interpreter(monkeypatch, tmp_path):
    script = tmp_path / "hapolicy"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "-c", "x"])
    assert upgrade.program() == [str(script), "-c", "x"]
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/hapolicy/__main__.py", "-c", "x"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "hapolicy", "-c", "x"])
    assert upgrade.program() == [sys.executable, "-m", "hapolicy", "-c", "x"]
