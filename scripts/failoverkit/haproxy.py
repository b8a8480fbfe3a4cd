"""HAProxy in front of a figure's backends: TCP mode, one thread, `balance leastconn`.

Contract: haproxy_missing() is '' when /usr/sbin/haproxy can run, else why not (the Debian
package haproxy, which scripts/run-tests installs). HAProxy(tmp, servers) writes its config
in tmp (servers: (name, port, weight, maxconn) each, maxconn 0 for none); start() runs
`haproxy -db -f CFG` in a session of its own, its output in a file of tmp, and returns once
it listens (found in /proc/net/tcp: no probe connection, which it would pass on to a server);
close() stops it (TERM, then KILL) and may be called twice. config_text() is the config, as
the report shows what each row ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from testkit.ports import HOST, free_port
from testkit.processes import kill_session, listening, wait_exit

HAPROXY = "/usr/sbin/haproxy"


def haproxy_missing() -> str:
    if not os.access(HAPROXY, os.X_OK):
        return f"{HAPROXY} not installed (apt-get install haproxy)"
    return ""


def config_text(port: int, servers: list[tuple[str, int, int, int]]) -> str:
    """One frontend, one backend balanced by leastconn, no health checks."""
    lines = [f"    server {name} {HOST}:{server_port} weight {weight}"
             + (f" maxconn {maxconn}" if maxconn else "")
             for name, server_port, weight, maxconn in servers]
    return "\n".join([
        "global", "    nbthread 1", "    maxconn 256",
        "defaults", "    mode tcp", "    timeout connect 5s", "    timeout queue 30s",
        "    timeout client 10m", "    timeout server 10m",
        "frontend policy", f"    bind {HOST}:{port}", "    default_backend services",
        "backend services", "    balance leastconn", *lines, ""])


class HAProxy:
    """One HAProxy process in front of servers, on a free port of 127.0.0.1."""

    count = 0

    def __init__(self, tmp: str, servers: list[tuple[str, int, int, int]]) -> None:
        HAProxy.count += 1
        self.port = free_port()
        self.config = os.path.join(tmp, f"haproxy{HAProxy.count}.cfg")
        self.output = os.path.join(tmp, f"haproxy{HAProxy.count}.out")
        with open(self.config, "w") as handle:
            handle.write(config_text(self.port, servers))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> HAProxy:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.config],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"haproxy did not listen on {self.port}: {self._said()}")
            time.sleep(0.02)
        return self

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if wait_exit(proc, 3) is None:
                kill_session(proc.pid)
                proc.wait(5)

    def _said(self) -> str:
        try:
            with open(self.output, errors="replace") as handle:
                return " | ".join(handle.read().strip().splitlines()[-5:]) or "nothing"
        except OSError:
            return "no output"
