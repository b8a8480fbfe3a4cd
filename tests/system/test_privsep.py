"""With --user nobody (the tests run as root), nothing that talks to the network runs as root.

The master stays root; the process that makes the check connections and the one that accepts
on the control socket and the metrics port is the monitor, running as nobody (its Uid line in /proc/PID/status, and
who holds the sockets: /proc/PID/fd against /proc/net/tcp and /proc/net/unix). Control
commands still act on every worker, checks still bring a service down and back, a HUP replaces
the monitor and keeps the admin state, a killed monitor is replaced while the daemon keeps
answering, a shutdown leaves no process and no control socket file, and when the master is
killed the monitor exits with the workers.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat

from testkit.backends import CHECK_SENDER, FakeBackend
from testkit.ctl import Load, ask_all, csv_rows, ctl, disable_under_load, read_all
from testkit.daemon import Daemon
from testkit.ports import HOST, free_port
from testkit.processes import (
    alive,
    connection_owners,
    holders,
    proc_stat,
    tcp_client_inodes,
    uid_of,
    unix_inodes,
)
from testkit.wait import wait_for

NOBODY = pwd.getpwnam("nobody").pw_uid
FAST_CHECKS = ("--check-interval", "0.2", "--check-down-interval", "0.2", "--check-rise", "1")


def daemon_as_nobody(*args: str) -> tuple[Daemon, str]:
    daemon = Daemon("--user", "nobody", *FAST_CHECKS, *args, workers=2)
    os.chmod(daemon.dir, 0o711)  # nobody reaches the syslog socket in it (not the control's)
    path = str(daemon.dir / "control")
    daemon.args += ["--control", path]
    return daemon, path


def checks_seen(backend: FakeBackend) -> int:
    return sum(r.get("sender") == CHECK_SENDER for r in backend.requests)


def test_the_monitor_runs_as_nobody_and_holds_the_check_connections_and_control_clients():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        mport = free_port()
        daemon, path = daemon_as_nobody("-s", a.spec(prio=10), "-s", b.spec(prio=20),
                                        "--metrics-listen", f"{HOST}:{mport}")
        with daemon.start():
            monitor = wait_for(daemon.monitor, 10, what="the monitor")
            workers = daemon.workers_now()
            everyone = [daemon.pid, monitor, *workers]
            assert uid_of(daemon.pid) == 0
            assert uid_of(monitor) == NOBODY
            assert all(uid_of(w) == NOBODY for w in workers)
            info = os.stat(path)  # made by the master: its user's, with its mode
            assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600
            # no live request yet: every connection to a backend is a check, made by the monitor
            wait_for(lambda: checks_seen(a) >= 2 and checks_seen(b) >= 2, 10, what="checks")
            for backend in (a, b):
                inodes = wait_for(lambda p=backend.port: tcp_client_inodes(p), 10,
                                  what="a check connection")
                assert {pid for inode in inodes for pid in holders(inode, everyone)} == {monitor}
            # the master keeps the listening socket (and the monitor has it); no worker does
            (listening,), _ = unix_inodes(path)
            assert sorted(holders(listening, everyone)) == sorted([daemon.pid, monitor])
            # a control client is accepted by the monitor alone
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                accepted = wait_for(lambda: unix_inodes(path)[1], 10, what="the accept")
                assert [holders(inode, everyone) for inode in accepted] == [[monitor]]
                client.sendall(b"workers\n")
                client.settimeout(5)
                answer = client.recv(4096).decode()
            assert sorted(int(line.split()[0]) for line in answer.splitlines()[1:]) == \
                sorted(workers)
            # a scrape of /metrics is accepted by the monitor alone
            with socket.create_connection((HOST, mport), timeout=5) as scrape:
                wait_for(lambda: connection_owners(mport, [scrape], everyone) != [0], 10,
                         what="the accept of the scrape")
                assert connection_owners(mport, [scrape], everyone) == [monitor]
                scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_all(scrape).startswith(b"HTTP/1.1 200 ")
            # the checks bring a service down and back up
            a.stop()
            wait_for(lambda: csv_rows(path)["default/A"]["state"] == "down", 10, what="A down")
            a.start()
            wait_for(lambda: csv_rows(path)["default/A"]["state"] == "up", 10, what="A up")
            _, line = daemon.log.wait("service A (")
            assert f"hapolicy[{monitor}]: " in line and "down" in line  # the monitor's check
            _, line = daemon.log.wait("up: check answered")
            assert f"hapolicy[{monitor}]: service A" in line
            os.kill(daemon.pid, signal.SIGKILL)  # the master dies: so do the others
            wait_for(lambda: not any(alive(pid) for pid in [monitor, *workers]), 10,
                     what="the monitor and the workers to exit")
        daemon.assert_clean_output()


def test_control_hup_and_a_killed_monitor_as_nobody_then_a_clean_stop():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        daemon, path = daemon_as_nobody("-s", a.spec(prio=10), "-s", b.spec(prio=10))
        with daemon.start():
            first = wait_for(daemon.monitor, 10, what="the monitor")
            ask_all(daemon, 20)
            with Load(daemon) as load:
                before_a, before_b = disable_under_load(path, "default/A", a, b)
                daemon.send(signal.SIGHUP)
                daemon.log.wait("reloaded")
                second = wait_for(lambda: daemon.monitor() not in (0, first) and
                                  daemon.monitor(), 10, what="a new monitor")
                assert not alive(first) and uid_of(second) == NOBODY
                assert "master is gone" not in daemon.log.text()  # killed before it could see
                assert csv_rows(path)["default/A"]["admin"] == "disabled"
                wait_for(lambda: len(b.live_requests) > before_b + 150, 10, what="load on B")
                assert len(a.live_requests) == before_a
                # a client the monitor has not accepted waits in the backlog, which is the
                # master's socket: the next monitor answers it
                os.kill(second, signal.SIGSTOP)
                wait_for(lambda: proc_stat(second)[0] == "T", 10, what="the monitor stopped")
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
                    waiting.settimeout(10)
                    waiting.connect(path)
                    waiting.sendall(b"csv\n")
                    os.kill(second, signal.SIGKILL)
                    assert read_all(waiting).startswith(b"# pool,service,")
                third = wait_for(lambda: daemon.monitor() not in (0, second) and
                                 daemon.monitor(), 10, what="the monitor replaced")
                assert uid_of(third) == NOBODY
                daemon.log.wait(f"monitor {second} exited with status -9")
                assert ctl("--control", path, "enable", "default/A").returncode == 0
                wait_for(lambda: len(a.live_requests) > before_a + 20, 10, what="load on A")
                assert csv_rows(path)["default/A"]["admin"] == "enabled"
            assert load.answers > 200 and not load.bad
            everyone = [daemon.pid, third, *daemon.workers_now()]
            assert daemon.stop() == 0
        assert not any(alive(pid) for pid in everyone)
        assert not os.path.exists(path)
        daemon.assert_clean_output()
