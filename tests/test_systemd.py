"""The daemon under systemd's protocols, without systemd: Type=notify (a NOTIFY_SOCKET datagram
socket of the test), socket activation (systemd-socket-activate), and the unit files
(systemd-analyze verify)."""

from __future__ import annotations

import signal
import socket
import threading
import time

from support.backends import FakeBackend
from support.daemon import Daemon, short_tmpdir
from support.ports import HOST
from support.wait import wait_for


class NotifyReceiver:
    """A unix datagram socket in a private directory: every datagram, with its arrival time."""

    def __init__(self) -> None:
        self.dir = short_tmpdir()
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, text in list(self.messages)]

    def wait(self, line: str, after: int = 0, timeout: float = 10.0) -> int:
        """The index of the first message from *after* on that has *line*."""
        def found():
            texts = self.texts()
            return next((i for i in range(after, len(texts))
                         if line in texts[i].splitlines()), None)
        return wait_for(found, timeout, what=f"{line!r} on NOTIFY_SOCKET: {self.texts()}")

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()


def test_notify_ready_reloading_stopping_status_and_watchdog():
    notify = NotifyReceiver()
    conf = notify.dir / "hapolicy.conf"
    try:
        with FakeBackend(mode="echo", attr="recipient") as echo:
            conf.write_text(f"service = A={HOST}:{echo.port}\ndefault = dunno\n")
            env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}
            with Daemon("-c", str(conf), workers=2, env=env) as daemon:
                ready = notify.wait("READY=1")
                assert any(t.startswith("STATUS=workers ") for t in notify.texts()[:ready + 1])
                notify.wait("STATUS=workers 2, services up 1 of 1")
                time.sleep(0.6)
                beats = [when for when, text in notify.messages if text == "WATCHDOG=1\n"]
                assert len(beats) >= 4, notify.texts()
                assert max(b - a for a, b in zip(beats, beats[1:])) < 0.5

                daemon.send(signal.SIGHUP)
                reloading = notify.wait("RELOADING=1", ready + 1)
                lines = notify.texts()[reloading].splitlines()
                usec = int(next(line for line in lines if line.startswith("MONOTONIC_USEC="))
                           .partition("=")[2])
                assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
                notify.wait("READY=1", reloading + 1)
                daemon.log.wait_text("reloaded:")

                assert daemon.stop() == 0
                notify.wait("STOPPING=1", reloading + 1)
                daemon.assert_clean_output()
                assert "cannot notify" not in daemon.log.text()
    finally:
        notify.close()


def test_a_missing_notify_socket_is_logged_once_and_ignored():
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "200000"}
    with Daemon("-s", f"A={HOST}:1", env=env) as d:
        time.sleep(0.5)
        assert d.stop() == 0
        d.assert_clean_output()
        lines = [line for line in d.log.text().splitlines() if "cannot notify" in line]
        assert len(lines) == 1, lines
        assert "cannot notify systemd at /nonexistent/notify: " in lines[0]
