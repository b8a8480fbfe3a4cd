"""The preforked daemon under load: persistent connections, many clients, the spread of
connections over workers, a killed worker, max-use recycling, process titles.

Real processes on 127.0.0.1: `python -m hapolicy --listen ...` in front of an `echo`
FakeBackend that answers each request with its recipient, so that every answer is checked
against its own request (a lost, swapped or duplicated answer fails).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.load import Load
from testkit.ports import HOST
from testkit.processes import cmdline, connection_owners, wait_children
from testkit.protocol import PolicyClient, request
from testkit.wait import wait_for


@pytest.fixture
def echo():
    with FakeBackend(mode="echo", attr="recipient", name="E") as backend:
        yield backend


def open_clients(daemon: Daemon, count: int) -> list[socket.socket]:
    return [daemon.connect() for _ in range(count)]


def test_one_persistent_connection_200_requests(echo):
    with Daemon("-s", echo.spec(), workers=2) as daemon:
        with PolicyClient(HOST, daemon.port) as client:
            for i in range(200):
                assert client.ask(request(recipient=f"r{i}@example.net")) == \
                    f"action=r{i}@example.net\n\n"
        assert daemon.stop() == 0
        daemon.assert_clean_output()
    assert len(echo.live_requests) == 200


def test_many_concurrent_persistent_connections(echo):
    with Daemon("-s", echo.spec(), workers=2) as daemon:
        loads = [Load(open_clients(daemon, 50), 20, name=f"T{t}-") for t in range(4)]
        started = time.monotonic()
        for load in loads:
            load.start()
        for load in loads:
            load.join()
        elapsed = time.monotonic() - started
        total = sum(load.answered for load in loads)
        print(f"\n200 connections x 20 requests: {total} answers in {elapsed:.2f}s, "
              f"{total / elapsed:.0f} requests/s")
        for load in loads:
            assert load.errors == []
        assert total == 4000
        for load in loads:
            load.close()
        assert daemon.stop() == 0
        daemon.assert_clean_output()


def test_connections_spread_evenly_over_workers(echo):
    with Daemon("-s", echo.spec(), workers=4) as daemon:
        pids = daemon.wait_ready()
        socks = open_clients(daemon, 200)
        # every connection is accepted and answered before counting
        Load(socks, 1, name="S").start().join()
        owners = connection_owners(daemon.port, socks, pids)
        counts = {pid: owners.count(pid) for pid in pids}
        print(f"\nper-worker connections (4 workers, 200 idle connections): "
              f"{sorted(counts.values())}")
        assert sum(counts.values()) == 200
        assert min(counts.values()) >= 35, counts  # even would be 50 each
        # the titles agree (they are refreshed every second)
        wait_for(lambda: sorted(_title_clients(pid) for pid in pids) == sorted(counts.values()),
                 5, what="titles with the client counts")
        for sock in socks:
            sock.close()
        assert daemon.stop() == 0
        daemon.assert_clean_output()


def _title_clients(pid: int) -> int:
    match = re.search(r"clients=(\d+)", cmdline(pid))
    return int(match.group(1)) if match else -1


def test_process_titles(echo):
    with Daemon("-s", echo.spec(), workers=2) as daemon:
        pids = daemon.wait_ready()
        assert cmdline(daemon.pid) == "hapolicy: master"
        with PolicyClient(HOST, daemon.port) as client:
            for _ in range(3):
                client.ask(request())
            wait_for(lambda: any(re.fullmatch(r"hapolicy: worker requests=3 clients=1",
                                              cmdline(pid)) for pid in pids),
                     5, what="a worker title with requests=3 clients=1")
        for pid in pids:
            assert re.fullmatch(r"hapolicy: worker requests=\d+ clients=\d+", cmdline(pid))
        assert daemon.stop() == 0


def test_killed_worker_is_replaced(echo):
    with Daemon("-s", echo.spec(), workers=2) as daemon:
        pids = daemon.wait_ready()
        socks = open_clients(daemon, 10)
        Load(socks, 2, name="K").start().join()
        owners = connection_owners(daemon.port, socks, pids)
        assert set(owners) == set(pids), owners  # both workers hold connections
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in daemon.workers_now(), 10, what="the victim reaped")
        new = wait_children(daemon.pid, 2)
        assert pids[1] in new
        daemon.wait_ready()
        # the survivor's connections keep working; the victim's are gone
        survivors = [s for s, o in zip(socks, owners) if o == pids[1]]
        load = Load(survivors, 20, name="Sv").start()
        load.join()
        assert load.errors == []
        for sock, owner in zip(socks, owners):
            if owner == victim:
                sock.settimeout(5)
                try:
                    sock.sendall(request())
                    assert sock.recv(100) == b""
                except (ConnectionResetError, BrokenPipeError):
                    pass
        # new connections work, and reach the new worker too
        fresh = open_clients(daemon, 10)
        load = Load(fresh, 20, name="N").start()
        load.join()
        assert load.errors == []
        assert set(connection_owners(daemon.port, fresh, new)) == set(new)
        log = daemon.log.text()
        assert f"worker {victim} exited with status -9" in log
        assert daemon.stop() == 0
        daemon.assert_clean_output()


def test_max_use_recycling_under_load(echo):
    with Daemon("-s", echo.spec(), "--max-use", "50", workers=2) as daemon:
        first = daemon.wait_ready()
        socks = open_clients(daemon, 20)
        load = Load(socks, 100, name="M").start()
        # meanwhile new connections come and go (they reach the replacements)
        churn_errors = []
        churned = 0
        while load._thread.is_alive():
            churn = Load(open_clients(daemon, 2), 10, name=f"C{churned}-").start()
            churn.join()
            churn_errors += churn.errors
            churned += 1
            churn.close()
        load.join()
        assert load.errors == []
        assert churn_errors == []
        assert load.answered == 2000
        # every persistent connection is still open and answered across the recycling
        again = Load(socks, 3, name="M").start()
        again.join()
        assert again.errors == []
        # the first workers have retired but still serve their connections
        retiring = [pid for pid in daemon.workers_now() if "(retiring)" in cmdline(pid)]
        assert set(first) <= set(retiring), [cmdline(p) for p in daemon.workers_now()]
        assert len(daemon.workers_now()) > 2
        assert "reached max-use 50: retiring" in daemon.log.text()
        # when their clients leave, the retired workers exit; two accepting ones remain
        load.close()
        wait_for(lambda: not set(first) & set(daemon.workers_now()), 10,
                 what="the retired workers to exit")
        wait_for(lambda: len([p for p in daemon.workers_now()
                              if "(retiring)" not in cmdline(p)]) == 2, 10)
        print(f"\nmax-use 50: 2000 + {again.answered} answers on 20 connections, "
              f"{churned * 20} on churned ones, 0 lost")
        assert daemon.stop() == 0
        daemon.assert_clean_output()
