"""Logging: syslog (facility mail, ident `hapolicy[PID]`) or stderr, one line per event.

Syslog is written by hand to a non-blocking datagram socket (/dev/log by default), so that a
slow or absent syslog daemon never blocks a worker and never crashes it: when the socket is
missing or full, lines are dropped and the socket is retried a few seconds later. Every line
is made printable and single: a client cannot forge log lines with a newline.

`RateLimited` holds back a warning that comes again and again (an outage, a flood of bad
requests): the first line at once, then at most one line a text every so often, with its count.
`describe_exception` is how an exception contained by the request path is named in a line.
"""

from __future__ import annotations

# the C module, not `socket`: the Python layer's enums and its import of selectors cost a
# spawned process about 2 ms of its start, and nothing here needs them
import _socket
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

FACILITY_MAIL = 2
PRIORITIES = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
RETRY_SECONDS = 5.0
MAX_LINE = 4096
# control characters, and what str.splitlines and some log readers take for a line end
_UNPRINTABLE = {c: "?" for c in (*range(32), 0x7F, 0x85, 0x2028, 0x2029)}


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
        self.sock: _socket.socket | None = None
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
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
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


def describe_exception(exc: BaseException) -> str:
    """`ValueError: embedded null character at hashkey.py:57`: the type, the message (at most
    200 characters) and where it was raised, for a log line."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = ""
    if frame is not None:
        where = f" at {os.path.basename(frame.tb_frame.f_code.co_filename)}:{frame.tb_lineno}"
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


class RateLimited:
    """Warnings that may come in floods: the first line at once; the lines that come within
    `seconds` after it are held, by text (at most MAX_TEXTS, then one `more warnings` line), and
    logged when that time is over, one line a text with its count."""

    MAX_TEXTS = 16

    def __init__(self, log: Logger, call_at: Callable[[float, Callable[[], None]], object],
                 seconds: float = 1.0, unit: str = "request") -> None:
        self.log = log
        self.call_at = call_at  # an event loop's, to log what was held
        self.seconds = seconds
        self.unit = unit  # what the counts count
        self.quiet_until = 0.0
        self.held: dict[str, int] = {}
        self.timer = None  # the call that logs what is held

    def warning(self, line: str) -> None:
        now = time.monotonic()
        if now >= self.quiet_until and not self.held:
            self.log.warning(line)
            self.quiet_until = now + self.seconds
            return
        if line not in self.held and len(self.held) >= self.MAX_TEXTS:
            line = "more warnings of other kinds"
        self.held[line] = self.held.get(line, 0) + 1
        if self.timer is None:
            self.timer = self.call_at(self.quiet_until, self.flush)

    def flush(self) -> None:
        """Log what is held (at the end of the quiet time, or when the process stops)."""
        self.timer = None
        for line, count in self.held.items():
            self.log.warning(f"{line} ({count} {self.unit}{'s' if count > 1 else ''} "
                             f"in {self.seconds:g}s)")
        self.held.clear()
        self.quiet_until = time.monotonic() + self.seconds
