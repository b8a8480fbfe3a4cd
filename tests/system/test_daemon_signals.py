"""The daemon's signals with real processes: HUP reload under load (and a broken config on
HUP), TERM drain, INT and QUIT at once (workers that outlive a SIGKILLed master: test_deadlines).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.load import Load
from testkit.ports import HOST, refused_port
from testkit.processes import alive, cmdline
from testkit.protocol import PolicyClient, request
from testkit.wait import wait_for


def ask_new_connection(daemon: Daemon, **attrs) -> str:
    with PolicyClient(HOST, daemon.port) as client:
        return client.ask(request(**attrs))


def test_hup_under_load_switches_new_connections_and_keeps_old_ones(tmp_path: Path):
    conf = tmp_path / "hapolicy.conf"
    with FakeBackend(mode="echo", attr="recipient") as echo:
        conf.write_text(f"service = OLD={HOST}:{echo.port}\ndefault = A\n")
        with Daemon("-c", str(conf), workers=2) as daemon:
            old_workers = daemon.wait_ready()
            loads = [Load([daemon.connect() for _ in range(25)], 0, name=f"H{t}-").start()
                     for t in range(4)]
            wait_for(lambda: all(load.answered > 50 for load in loads), 10)
            # the new config: every service refused, another default action
            conf.write_text(f"service = NEW={HOST}:{refused_port()}\ndefault = B\n")
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded: 1 services, 2 workers; 2 old workers retire")
            wait_for(lambda: ask_new_connection(daemon) == "action=B\n\n", 10,
                     what="a new connection answered by the new config")
            during = [load.answered for load in loads]
            for _ in range(20):
                assert ask_new_connection(daemon) == "action=B\n\n"
            # the old connections are still served by the old workers, with the old config
            wait_for(lambda: all(load.answered > n + 50 for load, n in zip(loads, during)), 10,
                     what="the old connections to keep getting answers")
            retiring = [p for p in daemon.workers_now() if "(retiring)" in cmdline(p)]
            assert sorted(retiring) == sorted(old_workers)
            assert len(daemon.workers_now()) == 4

            # a config that fails validation: logged, the running one stays
            new_workers = sorted(set(daemon.workers_now()) - set(old_workers))
            conf.write_text("service = X=127.0.0.1:1\nworkers = many\n")
            daemon.send(signal.SIGHUP)
            text = daemon.log.wait_text("reload failed")
            assert f"reload failed, keeping the running configuration: {conf}:2: workers" in text
            time.sleep(0.3)
            assert sorted(daemon.workers_now()) == sorted(old_workers + new_workers)
            assert ask_new_connection(daemon) == "action=B\n\n"

            for load in loads:
                load.stop()
            for load in loads:
                load.join()
            total = sum(load.answered for load in loads)
            print(f"\nHUP under load: {total} answers on 100 old connections, "
                  f"{sum(len(load.errors) for load in loads)} lost or wrong")
            for load in loads:
                assert load.errors == []
                assert load.answered == load.sent
            # when the old clients leave, the old workers exit
            for load in loads:
                load.close()
            wait_for(lambda: sorted(daemon.workers_now()) == new_workers, 10,
                     what="the old workers to exit")
            assert daemon.stop() == 0
            daemon.assert_clean_output()


def test_term_drains_in_flight_requests_then_cleans_up():
    with FakeBackend(action="SLOW", delay=1.0) as slow:
        daemon = Daemon("-s", slow.spec("S"), workers=2, listen="")
        daemon.listen = f"unix:{daemon.dir}/hapolicy.sock"
        pidfile = daemon.dir / "hapolicy.pid"
        daemon.args += ["--pidfile", str(pidfile)]
        with daemon.start():
            assert int(pidfile.read_text()) == daemon.pid
            busy = [daemon.connect() for _ in range(6)]
            idle = [daemon.connect() for _ in range(4)]
            for sock in idle:  # every connection is accepted before the TERM
                sock.sendall(request())
            wait_for(lambda: slow.wait_requests(4, 0), 5)
            time.sleep(1.2)
            for sock in idle:
                assert sock.recv(100) == b"action=SLOW\n\n"
            for sock in busy:
                sock.sendall(request())
            assert slow.wait_requests(10, 5)
            started = time.monotonic()
            daemon.send(signal.SIGTERM)
            for sock in busy:
                sock.settimeout(10)
                assert PolicyClient.from_socket(sock).read_answer() == "action=SLOW\n\n"
                assert sock.recv(100) == b""  # then closed
            for sock in idle:
                sock.settimeout(5)
                assert sock.recv(100) == b""
            assert daemon.stop(timeout=10) == 0
            assert time.monotonic() - started < 8
            assert not pidfile.exists()
            assert not Path(daemon.listen[5:]).exists()
            assert "stopping: draining in-flight requests" in daemon.log.text()
            assert "drain timeout" not in daemon.log.text()
            daemon.assert_clean_output()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_stop_at_once(signum):
    with FakeBackend(action="SLOW", delay=5.0) as slow:
        daemon = Daemon("-s", slow.spec("S"), workers=2)
        pidfile = daemon.dir / "hapolicy.pid"
        daemon.args += ["--pidfile", str(pidfile)]
        with daemon.start():
            workers = daemon.workers_now()
            sock = daemon.connect()
            sock.sendall(request())
            assert slow.wait_requests(1, 5)
            started = time.monotonic()
            daemon.send(signum)
            sock.settimeout(5)
            try:
                assert sock.recv(100) == b""  # no answer: closed at once
            except ConnectionResetError:
                pass
            status = daemon.wait(timeout=5)
            assert status == 0, daemon.stderr + daemon.log.text()
            assert time.monotonic() - started < 3
            assert not any(alive(pid) for pid in workers)
            assert not pidfile.exists()
            assert "stopping: at once" in daemon.log.text()
            daemon.assert_clean_output()


def test_term_also_ends_retiring_workers_holding_idle_connections():
    with FakeBackend(action="OK") as backend, \
            Daemon("-s", backend.spec("A"), workers=2) as daemon:
        old = daemon.wait_ready()
        clients = [PolicyClient(HOST, daemon.port) for _ in range(6)]
        for client in clients:
            assert client.ask(request()) == "action=OK\n\n"
        daemon.send(signal.SIGHUP)  # same config: every worker is replaced all the same
        daemon.log.wait("2 old workers retire")
        wait_for(lambda: len(daemon.workers_now()) == 4 and all(
            "(retiring)" in cmdline(pid) for pid in old), 10)
        for client in clients:  # still served by the retiring workers
            assert client.ask(request()) == "action=OK\n\n"
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 5
        for client in clients:
            assert client.read_until_eof(5) == b""
            client.close()
        daemon.assert_clean_output()
