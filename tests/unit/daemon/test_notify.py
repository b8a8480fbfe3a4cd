"""hapolicy.daemon.notify in process: the sd_notify datagram, the abstract namespace, the watchdog
variables, that a missing socket is logged once and never raises, and what ServiceNotes says."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from testkit.daemon import short_tmpdir

from hapolicy.daemon.notify import Notifier, ServiceNotes, monotonic_usec
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DISABLED


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_message_is_key_value_lines_in_one_datagram():
    path = short_tmpdir() / "notify"
    with receiver(str(path)) as sock:
        notifier = Notifier.from_environ(Log(), {"NOTIFY_SOCKET": str(path)})
        assert notifier.send("READY=1", "STATUS=workers 2,\nservices up 1 of 2")
        assert sock.recv(4096) == b"READY=1\nSTATUS=workers 2, services up 1 of 2\n"
    path.unlink()
    path.parent.rmdir()


def test_abstract_namespace():
    name = f"hapolicy-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver(b"\0" + name.encode()) as sock:
        notifier = Notifier.from_environ(Log(), {"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1\n"


def test_no_socket_no_error_and_a_missing_one_is_logged_once(tmp_path: Path):
    log = Log()
    assert not Notifier.from_environ(log, {}).send("READY=1")
    missing = Notifier.from_environ(log, {"NOTIFY_SOCKET": str(tmp_path / "none")})
    assert not missing.send("READY=1")
    assert not missing.send("WATCHDOG=1")
    assert len(log.lines) == 1
    assert log.lines[0].startswith(f"cannot notify systemd at {tmp_path / 'none'}: ")
    relative = Notifier.from_environ(log, {"NOTIFY_SOCKET": "relative"})
    assert not relative.enabled and not relative.send("READY=1")
    assert "NOTIFY_SOCKET 'relative' is not a path or @name: ignored" in log.lines[-1]


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "200000"}
    assert Notifier.from_environ(Log(), env).watchdog_interval() == 0.1
    ours = Notifier.from_environ(Log(), {**env, "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_interval() == 0.1
    other = Notifier.from_environ(Log(), {**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval() == 0
    log = Log()
    assert Notifier.from_environ(log, {**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() == 0
    assert log.lines == ["WATCHDOG_USEC 'soon' is not a positive number: ignored"]
    assert Notifier.from_environ(Log(), {"WATCHDOG_USEC": "200000"}).watchdog_interval() == 0
    assert Notifier.from_environ(Log(), {**env, "WATCHDOG_USEC": "1"}).watchdog_interval() == 0.01


def test_another_process_never_sends(tmp_path: Path):
    notifier = Notifier.from_environ(Log(), {"NOTIFY_SOCKET": "/nonexistent"})
    notifier.pid += 1  # as in a forked worker
    assert not notifier.send("READY=1")
    assert not notifier.failed


def test_monotonic_usec_is_clock_monotonic():
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    usec = monotonic_usec()
    assert before * 1e6 - 1 <= usec <= time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6 + 1


def test_service_notes_say_ready_once_and_the_status_when_it_changes():
    """ServiceNotes from what the master hands it: the serving workers, the pools' tables."""
    path = short_tmpdir() / "notify"
    grey, rate = HealthTable(2, shared=False), HealthTable(1, shared=False)
    with receiver(str(path)) as sock:
        notes = ServiceNotes(Notifier.from_environ(Log(), {"NOTIFY_SOCKET": str(path)}))
        notes.update(0, [grey, rate], time.monotonic())
        assert sock.recv(4096) == b"STATUS=workers 0, services up 3 of 3\n"
        notes.update(2, [grey, rate], time.monotonic())
        assert sock.recv(4096) == b"READY=1\nSTATUS=workers 2, services up 3 of 3\n"
        notes.update(2, [grey, rate], time.monotonic())  # nothing changed: nothing sent
        grey.set_admin(1, DISABLED)
        notes.update(2, [grey, rate], time.monotonic())
        assert sock.recv(4096) == b"STATUS=workers 2, services up 2 of 3 (1 disabled)\n"
        notes.reloading()
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        notes.update(1, [grey], time.monotonic())  # READY=1 again for the new configuration
        assert sock.recv(4096) == b"READY=1\nSTATUS=workers 1, services up 1 of 2 (1 disabled)\n"
    path.unlink()
    path.parent.rmdir()
