"""`hapolicyctl` as a subprocess, its csv read into rows by POOL/SERVICE, and the traffic the
control tests watch (`Load` in a thread, `ask_all`, one new SMTP transaction a request)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from itertools import count

from testkit.daemon import Daemon
from testkit.ports import HOST
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, hapolicy_env
from testkit.wait import wait_for


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hapolicy.ctl", *args], check=False, cwd=REPO,
                          env=hapolicy_env(), capture_output=True, text=True, timeout=20)


def csv_rows(path: str) -> dict[str, dict[str, str]]:
    """`hapolicyctl csv`'s rows as dicts of its columns, by `POOL/SERVICE`."""
    result = ctl("--control", path, "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# pool,service,address,state,admin,weight,answers,failures")
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return {f"{r['pool']}/{r['service']}": r for r in rows}


class Load:
    """Requests from 4 connections in a thread until stopped; counts the answers."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.answers = 0
        self.bad: list[str] = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        clients = [PolicyClient(HOST, self.daemon.port) for _ in range(4)]
        try:
            while not self.stopping:
                for client in clients:
                    answer = client.ask(fresh())
                    if answer != "action=DUNNO\n\n":
                        self.bad.append(answer)
                    self.answers += 1
                time.sleep(0.005)
        finally:
            for client in clients:
                client.sock.close()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(10)


INSTANCES = count()


def fresh() -> bytes:
    """A request of a new SMTP transaction (no stickiness to the last service)."""
    return request(instance=f"ctl{next(INSTANCES)}")


def ask_all(daemon: Daemon, count: int) -> None:
    with PolicyClient(HOST, daemon.port) as client:
        for _ in range(count):
            assert client.ask(fresh()) == "action=DUNNO\n\n"


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def disable_under_load(path: str, name: str, off, on) -> tuple[int, int]:
    """`disable POOL/SERVICE` while a Load runs: once the requests already on their way to it
    are answered, none reaches backend `off` while `on` serves 50 more. The two backends'
    live request counts then, for later comparisons."""
    assert ctl("--control", path, "disable", name).stdout == f"ok: {name} disabled\n"
    time.sleep(0.3)  # requests already on their way
    before_off, before_on = len(off.live_requests), len(on.live_requests)
    wait_for(lambda: len(on.live_requests) > before_on + 50, 10, what=f"load on {on.name}")
    assert len(off.live_requests) == before_off  # no worker sends it any more
    return before_off, before_on
