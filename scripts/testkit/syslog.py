"""A syslog receiver: the AF_UNIX datagram socket given to ``--syslog-socket``.

:class:`SyslogReceiver` reads its socket in a thread (the kernel queues only ~10 datagrams:
an unread socket would silently lose lines) and keeps every line with the monotonic time it
arrived, for tests (:meth:`~SyslogReceiver.text`, :meth:`~SyslogReceiver.wait_text`) and for
scripts/failover.py, which times log lines (:meth:`~SyslogReceiver.wait`).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable


class SyslogReceiver:
    """Receives syslog datagrams on *path* (default: ``log`` in a new private directory,
    removed by :meth:`close`); ``entries`` holds (arrival time, line), ``lines`` the lines."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._own_dir = None
        if path is None:
            self._own_dir = tempfile.mkdtemp(prefix="haplog")  # short: sun_path holds 108 bytes
            path = os.path.join(self._own_dir, "log")
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.05)
        self.entries: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="syslog")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:  # TimeoutError from 3.10 on
                continue
            except OSError:
                return
            with self._cond:
                self.entries.append((time.monotonic(), data.decode("utf-8", "replace")))
                self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        """Every line received so far, in order."""
        with self._cond:
            return [line for _, line in self.entries]

    def text(self) -> str:
        """Every line received so far, joined by newlines."""
        return "\n".join(self.lines)

    def matching(self, fragment: str) -> list[tuple[float, str]]:
        """(arrival time, line) of every line that contains *fragment*."""
        with self._cond:
            return [(t, line) for t, line in self.entries if fragment in line]

    def wait(self, fragment: str, count: int = 1, timeout: float = 10.0) -> tuple[float, str]:
        """(arrival time, line) of the *count*-th line containing *fragment*; AssertionError
        when it has not come within *timeout* seconds."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: len([1 for _, line in self.entries if fragment in line]) >= count, timeout)
        if not found:
            raise AssertionError(f"timed out after {timeout}s waiting for log line "
                                 f"#{count} with {fragment!r}")
        return self.matching(fragment)[count - 1]

    def wait_text(self, fragment: str, timeout: float = 10.0) -> str:
        """Wait for a line containing *fragment*; then :meth:`text`."""
        self.wait(fragment, timeout=timeout)
        return self.text()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 5) -> list[str]:
        """Wait until predicate(lines) holds (or the timeout passes); return the lines."""
        with self._cond:
            self._cond.wait_for(lambda: predicate([line for _, line in self.entries]), timeout)
        return self.lines

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
