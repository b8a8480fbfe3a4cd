"""systemd's sd_notify protocol, with the standard library: tell the service manager how the
master is doing.

`Notifier.from_environ()` reads NOTIFY_SOCKET (a unix datagram socket path; a leading `@` is
the abstract namespace), WATCHDOG_USEC and WATCHDOG_PID. Without NOTIFY_SOCKET it does
nothing. `send("READY=1", ...)` sends one datagram of `KEY=VALUE\\n` lines from a socket made
for that datagram (no descriptor is kept, so a worker inherits none), and only from the process
that made the notifier: a forked worker never sends. It never raises: the first failure (a
socket that does not exist, a full queue) is logged once as a warning and later ones are
ignored.

`ServiceNotes` is what the master says, when: READY=1 once at least one worker of the running
configuration accepts (at start and after each reload; waiting for all of them would fail a
start on one worker that dies at boot), RELOADING=1 with MONOTONIC_USEC when a HUP starts a
reload, STOPPING=1 on TERM or INT, STATUS=workers N, services up M of K (and `(D disabled)` when the
operator disabled some) when that changes, and
WATCHDOG=1 every half WATCHDOG_USEC (when WATCHDOG_PID is unset or the master's pid).

In an upgrade in place the old master says RELOADING=1 when it starts the new program, and
READY=1 again if that fails; the new master says MAINPID= with its READY=1 (the unit's
NotifyAccess=all lets it, a child of the main process, say so), and the old one says nothing
more once the new one serves (`silence`).
"""

from __future__ import annotations

import os
import socket
import time

from hapolicy.base.log import Logger
from hapolicy.tables.layout import UP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.tables.health import HealthTable


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(text: str) -> str | bytes:
    """The address to send to: a path, or bytes starting with NUL for `@name`."""
    if text.startswith("@"):
        return b"\0" + os.fsencode(text[1:])
    return text


class Notifier:
    """Sends sd_notify datagrams from one process; a no-op without NOTIFY_SOCKET."""

    def __init__(self, address: str, watchdog_usec: int, log: Logger | None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.log = log
        self.pid = os.getpid()
        self.failed = False

    @classmethod
    def from_environ(cls, log: Logger | None, environ: Mapping[str, str] | None = None,
                     pid: int | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        address = env.get("NOTIFY_SOCKET", "")
        if address and not address.startswith(("/", "@")):
            if log is not None:
                log.warning(f"NOTIFY_SOCKET {address!r} is not a path or @name: ignored")
            address = ""
        usec = 0
        text = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if text and (not watchdog_pid or watchdog_pid == str(pid)):
            usec = int(text) if text.isascii() and text.isdigit() else 0
            if not usec and log is not None:
                log.warning(f"WATCHDOG_USEC {text!r} is not a positive number: ignored")
        return cls(address, usec, log)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def watchdog_interval(self) -> float:
        """Seconds between two WATCHDOG=1 (half of WATCHDOG_USEC, at least 10 ms); 0 without
        a watchdog."""
        if not self.enabled or not self.watchdog_usec:
            return 0.0
        return max(self.watchdog_usec / 2e6, 0.01)

    def send(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; False when not sent. Never raises."""
        if not self.address or self.failed or os.getpid() != self.pid:
            return False
        data = "".join(line.replace("\n", " ") + "\n" for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(data, notify_address(self.address))
        except (OSError, ValueError) as exc:
            self.failed = True
            if self.log is not None:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                self.log.warning(f"cannot notify systemd at {self.address}: {why}; "
                                 "not trying again")
            return False
        return True


class ServiceNotes:
    """What the master tells systemd: readiness, reloads, stopping, status, the watchdog."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.ready = False  # READY=1 sent for the running configuration
        self.status = ""
        self.main_pid = 0  # to say with READY=1: the new master of an upgrade

    def start(self, loop: EventLoop) -> None:
        """Once the master's loop exists: the watchdog timer."""
        interval = self.notifier.watchdog_interval()
        if interval > 0:
            def beat() -> None:
                self.notifier.send("WATCHDOG=1")
                loop.call_later(interval, beat)
            beat()

    def reloading(self) -> None:
        self.ready = False
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1")

    def resumed(self) -> None:
        """An upgrade failed: the running configuration is READY again at the next update."""
        self.ready = False

    def take_main(self, pid: int) -> None:
        """This master replaces the main process: MAINPID=pid with its READY=1."""
        self.main_pid = pid

    def silence(self) -> None:
        """An old master once the new one serves: nothing more to systemd."""
        self.notifier = Notifier("", 0, self.notifier.log)

    def update(self, serving: int, tables: Iterable[HealthTable], now: float) -> None:
        """After each turn of the master's loop while it runs (not while it stops): READY=1
        when due, STATUS= when it changed. serving: the workers of the running configuration
        that said READY; tables: each pool's, whose services' states are read at now."""
        if not self.notifier.enabled:
            return
        lines = []
        if serving and not self.ready:
            self.ready = True
            if self.main_pid:
                lines.append(f"MAINPID={self.main_pid}")
            lines.append("READY=1")
        up = total = disabled = 0
        for table in tables:
            total += table.count
            up += sum(table.state(i, now) == UP for i in range(table.count))
            disabled += sum(table.disabled(i) for i in range(table.count))
        status = f"workers {serving}, services up {up} of {total}"
        if disabled:
            status += f" ({disabled} disabled)"
        if status != self.status:
            self.status = status
            lines.append(f"STATUS={status}")
        if lines:
            self.notifier.send(*lines)
