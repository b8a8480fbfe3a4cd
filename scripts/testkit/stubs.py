"""Stub policy backends on 127.0.0.1, one fixed behaviour each, for hapolicy's tests.

* :class:`RawBackend` -- a policy server that writes given bytes as each answer.
* :class:`ScriptedBackend` -- one connection, each answer of a script sent in pieces.
* :class:`OnceThenDead` -- answers a few connections, then stops listening.
* :class:`Blackhole` -- an address where ``connect()`` never completes.

(The backend whose behaviour a test chooses and changes: :class:`testkit.backends.FakeBackend`.)
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

from testkit.ports import HOST
from testkit.protocol import read_frame, service_spec

if TYPE_CHECKING:
    from typing_extensions import Self


class Blackhole:
    """A 127.0.0.1 address where ``connect()`` never completes (the SYN is dropped).

    How: a listener with ``listen(0)`` that nobody accepts from. Linux queues one
    established connection; once the accept queue is full it silently drops further SYNs
    (``tcp_abort_on_overflow`` = 0, syncookies do not help a full accept queue), so a
    client stays in SYN-SENT, retransmitting, until its own timeout (about 130 s with
    ``tcp_syn_retries`` = 6). :meth:`start` fills the queue with filler connections until
    one of them stays pending, which proves the next connect will hang as well.
    """

    MAX_FILLERS = 16
    PROBE = 0.2  # seconds a filler may take to connect before the queue counts as full

    def __init__(self) -> None:
        self.host = HOST
        self.port = 0
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def start(self) -> Blackhole:
        """Make the listener and fill its accept queue; return self."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind((self.host, 0))
            self._listener.listen(0)
            self.port = self._listener.getsockname()[1]
            for _ in range(self.MAX_FILLERS):
                if not self._fill_one():
                    return self
            raise RuntimeError("could not fill the accept queue: connect does not hang here")
        except BaseException:
            self.stop()
            raise

    def _fill_one(self) -> bool:
        """Connect one filler; return whether it connected within PROBE seconds."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._fillers.append(sock)
        sock.setblocking(False)
        sock.connect_ex((self.host, self.port))
        _, writable, _ = select.select([], [sock], [], self.PROBE)
        return bool(writable)

    def stop(self) -> None:
        """Close the fillers and the listener (pending connects then get refused)."""
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def spec(
        self,
        name: str,
        prio: int | None = None,
        weight: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """``NAME=127.0.0.1:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`` for this address."""
        return service_spec(name, self.port, prio, weight, timeout, self.host)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawBackend:
    """A policy server that writes the given bytes as its answer to each request.

    With `close`, the connection is closed after the reply; otherwise it stays open and the
    next request on it gets the same reply. Counts connections and keeps the raw requests.
    """

    def __init__(self, reply: bytes, close: bool = False) -> None:
        self.reply = reply
        self.close_after = close
        self.connections = 0
        self.raw_requests: list[bytes] = []
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def spec(self, name: str, prio: int = 10, weight: int = 1, timeout: int = 1) -> str:
        return f"{name}={HOST}:{self.port}:{prio}:{weight}:{timeout}"

    def _accept(self) -> None:
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n\n" in buf:
                    raw, _, buf = buf.partition(b"\n\n")
                    self.raw_requests.append(raw + b"\n\n")
                    sock.sendall(self.reply)
                    if self.close_after:
                        sock.close()
                        return
        except OSError:
            return

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
        for sock in self.socks:
            sock.close()


class ScriptedBackend:
    """A one-connection policy server that answers each request with the next answer of a
    script, each given as pieces sent with a pause between them; `reset` closes the
    connection with a TCP reset."""

    def __init__(self, *answers: list[bytes], family: int = socket.AF_INET,
                 path: str = "", reset_after_request: bool = False) -> None:
        self.answers = list(answers)
        self.reset_after_request = reset_after_request
        if family == socket.AF_UNIX:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.listener.listen(8)
            self.port = 0
        else:
            self.listener = socket.create_server((HOST, 0))
            self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        data = b""
        if self.reset_after_request:
            while b"\n\n" not in data:
                data += conn.recv(65536)
            self.reset()
            return
        for pieces in self.answers:
            while b"\n\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            data = data.split(b"\n\n", 1)[1]
            for n, piece in enumerate(pieces):
                if n:
                    time.sleep(0.1)
                conn.sendall(piece)

    def reset(self) -> None:
        assert self.conn is not None
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()

    def close(self) -> None:
        self.listener.close()


class OnceThenDead:
    """A backend that answers `answers` connections with a distinctive action, then stops
    listening: a proxy in front of it can only answer its default from then on."""

    ANSWER = b"action=DUNNO once-then-dead\n\n"

    def __init__(self, answers: int) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.answers = answers
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            for _ in range(self.answers):
                conn, _ = self.listener.accept()
                with conn:
                    read_frame(conn)
                    conn.sendall(self.ANSWER)
