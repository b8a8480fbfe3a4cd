"""A stand-in for a daemon's control socket: a unix socket at a path that reads each
connection's command and answers it with fixed bytes, or (`drip`) with one byte every so often
until the stand-in is closed: what hapolicyctl must bear from a socket that is not hapolicy's.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class FakeControl:
    """Serves in a thread until `close` (or the end of a `with`)."""

    def __init__(self, path: str, answer: bytes = b"", drip: float = 0.0) -> None:
        self.path = path
        self.answer = answer
        self.drip = drip  # > 0: one byte every drip seconds instead of the answer
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(4096)
                if not self.drip:
                    conn.sendall(self.answer)
                    continue
                while not self.closed.wait(self.drip):
                    try:
                        conn.send(b"#")
                    except OSError:
                        break

    def close(self) -> None:
        self.closed.set()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
