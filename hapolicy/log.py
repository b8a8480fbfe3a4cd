"""Logging: syslog (facility mail, ident `hapolicy[PID]`) or stderr, one line per event.

Syslog is written by hand to a non-blocking datagram socket (/dev/log by default), so that a
slow or absent syslog daemon never blocks a worker and never crashes it: when the socket is
missing or full, lines are dropped and the socket is retried a few seconds later. Every line
is made printable and single: a client cannot forge log lines with a newline.
"""

from __future__ import annotations

import os
import socket
import sys
import time

FACILITY_MAIL = 2
PRIORITIES = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
RETRY_SECONDS = 5.0
MAX_LINE = 4096
_UNPRINTABLE = {c: "?" for c in range(32)}


def clean(text: str) -> str:
    """One printable line (control characters become '?')."""
    return text.translate(_UNPRINTABLE)[:MAX_LINE]


class Logger:
    """Writes log lines to syslog or to stderr; never raises."""

    def __init__(self, syslog_socket: str = "/dev/log", to_stderr: bool = False,
                 ident: str = "hapolicy") -> None:
        self.path = syslog_socket
        self.to_stderr = to_stderr
        self.ident = ident
        self.sock: socket.socket | None = None
        self.retry_at = 0.0

    def log(self, level: str, message: str) -> None:
        line = clean(message)
        if self.to_stderr:
            try:
                sys.stderr.write(f"{self.ident}[{os.getpid()}]: {level}: {line}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            return
        if not self.path:
            return
        if self.sock is None and not self._connect():
            return
        pri = FACILITY_MAIL * 8 + PRIORITIES.get(level, 6)
        stamp = time.strftime("%b %e %H:%M:%S")
        data = f"<{pri}>{stamp} {self.ident}[{os.getpid()}]: {line}".encode("utf-8", "replace")
        try:
            self.sock.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            pass  # syslog is behind: drop the line rather than stall the worker
        except OSError:
            self.close()
            self.retry_at = time.monotonic() + RETRY_SECONDS

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self.retry_at:
            return False
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:  # out of file descriptors: drop lines, retry later
            self.retry_at = now + RETRY_SECONDS
            return False
        try:
            sock.setblocking(False)
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.retry_at = now + RETRY_SECONDS
            return False
        self.sock = sock
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def info(self, message: str) -> None:
        self.log("info", message)

    def notice(self, message: str) -> None:
        self.log("notice", message)

    def warning(self, message: str) -> None:
        self.log("warning", message)

    def error(self, message: str) -> None:
        self.log("error", message)
