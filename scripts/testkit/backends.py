"""The fake Postfix policy backend on 127.0.0.1, for hapolicy's tests and scripts.

* :class:`FakeBackend` -- a policy server in a background thread (one selectors loop)
  whose behaviour is chosen by a *mode* and can be changed while it runs.

Backends of one fixed behaviour each, and an address where a connect hangs, are in
:mod:`testkit.stubs`; a port where nothing listens: :func:`testkit.ports.refused_port`.
"""

from __future__ import annotations

import collections
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from testkit.ports import HOST
from testkit.protocol import fake_reply, parse_attrs, service_spec, split_frame

if TYPE_CHECKING:
    from typing_extensions import Self

CHECK_SENDER = "hapolicy-check@localhost"  # the sender of hapolicy's default check request

MODES = (
    "answer",  # action=<action>, after <delay> seconds
    "echo",  # action=<value of attribute <attr>> (falls back to <action> if absent)
    "silent",  # read requests, never answer
    "garbage",  # "this is not a policy answer"
    "noaction",  # foo=bar
    "close",  # close each connection as soon as it is accepted
    "close_after_request",  # read a full request, then close without answering
    "partial",  # write "action=DUN", then close
    "huge",  # action= followed by 100000 x
    "multiline",  # foo=1, action=<action>, action=SECOND
    "extra",  # action=<action>, extra=1
    "crlf",  # action=<action> ended by CRLF, extra=1 by LF
    "split",  # action=<action> and LF, then 0.05 s later action=OK and the empty line
)

class _Conn:
    """One accepted connection of a FakeBackend (used by its loop thread only)."""

    __slots__ = ("closing", "eof", "events", "inbuf", "last_due", "outbuf", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pending: collections.deque[tuple[float, bytes, bool]] = collections.deque()
        self.eof = False  # the client shut down its side
        self.closing = False  # close once outbuf is flushed
        self.last_due = 0.0
        self.events = 0  # selector events registered (0: not registered)


class FakeBackend:
    """A policy server on 127.0.0.1 served by one background thread (a selectors loop).

    Use as a context manager or call :meth:`start` / :meth:`stop`. Behaviour is set by
    ``mode`` (see :data:`MODES`) and may be changed at run time with :meth:`set_mode`; it
    applies to requests received afterwards. ``delay`` applies to every mode that writes
    (or closes after a request); with ``slow_every`` N, every N-th request received waits
    ``slow_delay`` instead (a backend slow on a known share of requests). With ``serial``
    it serves one request at a time over all its connections, each taking ``delay`` (as
    postgrey, one single-threaded process, does); ``max_pending`` is then the most requests
    it held at once, received and not yet answered (its own queue). After
    :meth:`stop`, :meth:`start` binds the same port again, which simulates a restart of the
    service.

    Observations: ``requests`` (parsed), ``raw_requests`` (exact bytes, final empty line
    included), ``connections`` (accepted so far), ``open_connections`` and ``errors``
    (unexpected exceptions of the loop thread; should stay empty).
    """

    def __init__(
        self,
        mode: str = "answer",
        action: str = "DUNNO",
        delay: float = 0.0,
        attr: str | None = None,
        name: str = "",
        port: int = 0,
        slow_every: int = 0,
        slow_delay: float = 0.0,
        serial: bool = False,
    ) -> None:
        self.host = HOST
        self.port = port
        self.name = name
        self.requests: list[dict[str, str]] = []
        self.raw_requests: list[bytes] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = False
        self._drop = False
        self._conns: dict[socket.socket, _Conn] = {}
        self.mode = "answer"
        self.action = action
        self.delay = delay
        self.attr = attr
        self.slow_every = slow_every
        self.slow_delay = slow_delay
        self.serial = serial
        self.serial_due = 0.0  # when the serial backend is free again
        self.max_pending = 0
        self.set_mode(mode)

    # -- control ---------------------------------------------------------------

    def set_mode(self, mode: str, **kw: Any) -> None:
        """Change the mode and optionally ``action``, ``delay`` or ``attr``."""
        unknown = set(kw) - {"action", "delay", "attr"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        attr = kw.get("attr", self.attr)
        if mode == "echo" and not attr:
            raise ValueError("mode 'echo' needs attr=NAME")
        with self._cond:
            self.mode = mode
            self.attr = attr
            self.action = kw.get("action", self.action)
            self.delay = kw.get("delay", self.delay)

    def start(self) -> FakeBackend:
        """Bind (the previous port, if any) and start serving; return self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"FakeBackend-{self.name or self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the thread (within 2 s)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join(2.0)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop within 2 s")
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    def drop_connections(self) -> None:
        """Close all current client connections (the listener stays)."""
        self._drop = True
        self._wake()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeBackend {self.name!r} {self.host}:{self.port} mode={self.mode}>"

    # -- helpers for tests -----------------------------------------------------

    def spec(
        self,
        name: str | None = None,
        prio: int | None = None,
        weight: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """``NAME=127.0.0.1:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`` (name defaults to self.name)."""
        return service_spec(name or self.name, self.port, prio, weight, timeout, self.host)

    @property
    def live_requests(self) -> list[dict[str, str]]:
        """The requests received, less hapolicy's active checks (from hapolicy-check@localhost)."""
        return [r for r in self.requests if r.get("sender") != CHECK_SENDER]

    @property
    def open_connections(self) -> int:
        """Number of client connections currently open."""
        return len(self._conns)

    def wait_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` requests were received; return whether they were."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= count, timeout)

    # -- the loop thread -------------------------------------------------------

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"x")
        except OSError:
            pass  # buffer full or already closed: the loop is awake anyway

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                if self._drop:
                    self._drop = False
                    for conn in list(self._conns.values()):
                        self._close(sel, conn)
                for key, events in sel.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._service(sel, key.data, events)
                now = time.monotonic()
                for conn in list(self._conns.values()):
                    self._release_due(sel, conn, now)
        except BaseException as exc:  # noqa: BLE001 -- recorded, never leaked into pytest
            self.errors.append(exc)
        finally:
            for conn in list(self._conns.values()):
                self._close(sel, conn)
            sel.close()
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _next_timeout(self) -> float | None:
        dues = [c.pending[0][0] for c in self._conns.values() if c.pending]
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        self.connections += 1
        if self.mode == "close":
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self._conns[sock] = conn
        self._set_events(sel, conn, selectors.EVENT_READ)

    def _service(self, sel: selectors.BaseSelector, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(sel, conn)
                return
            if data is not None:
                if not data:
                    conn.eof = True
                conn.inbuf += data
                self._frame_requests(conn)
        if events & selectors.EVENT_WRITE:
            self._flush(sel, conn)
        else:
            self._update(sel, conn)

    def _frame_requests(self, conn: _Conn) -> None:
        while not conn.closing:
            size = split_frame(conn.inbuf)
            if not size:
                return
            raw = bytes(conn.inbuf[:size])
            del conn.inbuf[:size]
            with self._cond:
                attrs = parse_attrs(raw)
                self.raw_requests.append(raw)
                self.requests.append(attrs)
                self._cond.notify_all()
                reply = fake_reply(self.mode, self.action, self.attr, attrs)
                delay = self.delay
                if self.slow_every and len(self.requests) % self.slow_every == 0:
                    delay = self.slow_delay
            if reply is not None:
                due = conn.last_due = self._due(conn, delay)
                if self.mode == "split":  # the answer's first line alone, its end later
                    conn.pending.append((due, reply[0], False))
                    due = conn.last_due = due + 0.05
                    reply = (b"action=OK\n\n", False)
                conn.pending.append((due, *reply))
                pending = sum(len(c.pending) for c in self._conns.values())
                self.max_pending = max(self.max_pending, pending)

    def _due(self, conn: _Conn, delay: float) -> float:
        """When the answer to a request received now goes out: after delay, in order on its
        connection, and, serial, after every answer before it."""
        now = time.monotonic()
        if self.serial:
            self.serial_due = max(now, self.serial_due) + delay
            return self.serial_due
        return max(now + delay, conn.last_due)

    def _release_due(self, sel: selectors.BaseSelector, conn: _Conn, now: float) -> None:
        """Move answers whose delay has passed to the output buffer and try to send."""
        moved = False
        while conn.pending and conn.pending[0][0] <= now and not conn.closing:
            _, data, close_after = conn.pending.popleft()
            conn.outbuf += data
            conn.closing = close_after
            moved = True
        if moved:
            self._flush(sel, conn)

    def _flush(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """Send what the output buffer holds (as much as the socket takes), then update."""
        try:
            sent = conn.sock.send(conn.outbuf) if conn.outbuf else 0
            del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(sel, conn)
            return
        self._update(sel, conn)

    def _update(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """Close a finished connection, or register the events it now waits for."""
        if conn.sock not in self._conns:
            return
        done_reading = conn.eof or conn.closing
        if not conn.outbuf and (conn.closing or (conn.eof and not conn.pending)):
            self._close(sel, conn)
            return
        events = (0 if done_reading else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        self._set_events(sel, conn, events)  # 0: only a delayed answer is awaited

    @staticmethod
    def _set_events(sel: selectors.BaseSelector, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            sel.register(conn.sock, events, conn)
        elif not events:
            sel.unregister(conn.sock)
        else:
            sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        if conn.events:
            sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
