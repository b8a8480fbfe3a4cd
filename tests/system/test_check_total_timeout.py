"""Review of issue 32: `hapolicyctl check -t SECONDS` bounds each answer's wait, as the
Monitoring Plugins guidelines ask of a plugin's timeout: a control socket that answers a byte
at a time (a wedged or foreign daemon) gets UNKNOWN once -t has passed, not a check that runs
as long as the bytes keep coming."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from testkit.daemon import short_tmpdir
from testkit.repo import REPO, hapolicy_env


def dripping_socket(path: str, stop: threading.Event) -> None:
    """A control socket that answers every connection one byte every 0.3 s until stopped."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.2)

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.recv(4096)
                    while not stop.wait(0.3):
                        try:
                            conn.send(b"#")
                        except OSError:
                            break

    threading.Thread(target=serve, daemon=True).start()


def test_check_gives_up_once_its_timeout_has_passed():
    path = str(short_tmpdir() / "control")
    stop = threading.Event()
    dripping_socket(path, stop)
    try:
        done = subprocess.run([sys.executable, "-m", "hapolicy.ctl", "--control", path,
                               "check", "-t", "1", "--interval", "0.1"], cwd=REPO,
                              env=hapolicy_env(), capture_output=True, text=True, timeout=20,
                              check=False)
    except subprocess.TimeoutExpired:
        done = None
    finally:
        stop.set()
        time.sleep(0.1)
    assert done is not None, "check -t 1 still waited for the answer after 20 s"
    assert done.returncode == 3 and done.stdout.startswith("HAPOLICY UNKNOWN - "), done
