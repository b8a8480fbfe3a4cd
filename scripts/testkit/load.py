"""Load on a policy server: many persistent connections driven by one thread with a selector.

Every request carries a unique recipient that an ``echo`` FakeBackend sends back, so a
wrong, swapped or missing answer is seen.
"""

from __future__ import annotations

import selectors
import socket
import threading

from testkit.protocol import request
from testkit.wait import wait_for


class Conn:
    """One persistent policy connection of a Load."""

    def __init__(self, sock: socket.socket, ident: str) -> None:
        self.sock = sock
        self.ident = ident
        self.inbuf = bytearray()
        self.expect = ""  # the answer awaited, "" when none
        self.sent = 0
        self.answered = 0
        self.error = ""


class Load:
    """Drive persistent connections from one thread: each connection sends `requests`
    requests one after the other (or until stop() when requests is 0), each with a
    unique recipient, and checks that each answer echoes it. Errors are collected."""

    def __init__(self, socks: list[socket.socket], requests: int, name: str = "L",
                 expected_prefix: str = "") -> None:
        self.conns = [Conn(sock, f"{name}{i}") for i, sock in enumerate(socks)]
        self.requests = requests
        self.prefix = expected_prefix
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"load-{name}")

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send no new requests; wait for the answers awaited."""
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "load did not finish"

    def finish_after(self, more: int, timeout: float = 10.0) -> int:
        """Once `more` answers came since now: stop, join, and check that every request was
        answered, rightly; the answers there were before (the connections stay open)."""
        before = self.answered
        wait_for(lambda: self.answered > before + more, timeout,
                 what=f"{more} more answers on the load's connections")
        self.stop()
        self.join()
        assert self.errors == [] and self.answered == self.sent > before
        return before

    @property
    def answered(self) -> int:
        return sum(c.answered for c in self.conns)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.conns)

    @property
    def errors(self) -> list[str]:
        return [f"{c.ident}: {c.error}" for c in self.conns if c.error] + self.wrong

    def _send(self, conn: Conn) -> None:
        rcpt = f"{conn.ident}-{conn.sent}@example.net"
        conn.expect = f"action={self.prefix}{rcpt}\n\n"
        conn.sock.sendall(request(recipient=rcpt))
        conn.sent += 1

    def _more(self, conn: Conn) -> bool:
        if self._stop.is_set():
            return False
        return not self.requests or conn.sent < self.requests

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        active = 0
        for conn in self.conns:
            conn.sock.settimeout(10)
            if self._more(conn):
                self._send(conn)
                sel.register(conn.sock, selectors.EVENT_READ, conn)
                active += 1
        deadline_idle = 30.0
        while active:
            events = sel.select(deadline_idle)
            if not events:
                for key in list(sel.get_map().values()):
                    key.data.error = f"no answer within {deadline_idle}s to #{key.data.sent}"
                break
            for key, _ in events:
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError as exc:
                    data, conn.error = b"", f"recv: {exc}"
                if not data:
                    conn.error = conn.error or (f"closed by the server after {conn.answered} "
                                                f"answers, awaiting #{conn.sent}")
                    sel.unregister(conn.sock)
                    active -= 1
                    continue
                conn.inbuf += data
                while b"\n\n" in conn.inbuf:
                    end = conn.inbuf.index(b"\n\n") + 2
                    answer = bytes(conn.inbuf[:end]).decode()
                    del conn.inbuf[:end]
                    if answer != conn.expect:
                        self.wrong.append(f"{conn.ident}: got {answer!r}, want {conn.expect!r}")
                    conn.answered += 1
                    conn.expect = ""
                if not conn.expect:
                    if self._more(conn):
                        self._send(conn)
                    else:
                        sel.unregister(conn.sock)
                        active -= 1
        sel.close()

    def close(self) -> None:
        for conn in self.conns:
            conn.sock.close()
