"""The daemon on a unix socket: --socket-mode (at start, and changed by a reload but never
through a symlink put at the path), a stale socket file replaced, a live one refused.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.processes import alive
from testkit.protocol import PolicyClient, request
from testkit.repo import run_hapolicy
from testkit.wait import wait_for


def unix_daemon(backend: FakeBackend, *args: str) -> Daemon:
    daemon = Daemon("-s", backend.spec("A"), *args, workers=2, listen="")
    daemon.listen = f"unix:{daemon.dir}/policy.sock"
    return daemon


def ask(daemon: Daemon) -> str:
    with PolicyClient.from_socket(daemon.connect()) as client:
        return client.ask(request())


def test_unix_socket_with_mode():
    with FakeBackend(action="OK") as backend, unix_daemon(backend, "--socket-mode", "0600") as d:
        path = Path(d.listen[5:])
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert ask(d) == "action=OK\n\n"
        assert d.stop() == 0
        assert not path.exists()
        d.assert_clean_output()


def test_stale_socket_of_a_killed_daemon_is_replaced():
    with FakeBackend(action="OK") as backend:
        first = unix_daemon(backend)
        with first:
            workers = first.wait_ready()
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(5)
            wait_for(lambda: not any(alive(pid) for pid in workers), 5)
            path = Path(first.listen[5:])
            assert path.exists()  # left behind
            second = Daemon("-s", backend.spec("A"), workers=2, listen=first.listen)
            with second:
                assert ask(second) == "action=OK\n\n"
                assert second.stop() == 0
                second.assert_clean_output()
            assert not path.exists()


def test_live_socket_is_refused():
    with FakeBackend(action="OK") as backend, unix_daemon(backend) as running:
        path = Path(running.listen[5:])
        inode = path.stat().st_ino
        done = run_hapolicy(["--listen", running.listen, "-s", backend.spec("A"),
                             "--syslog-socket", running.log.path])
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr == (f"hapolicy: error: listen address {running.listen}: "
                               "another process is listening there\n")
        assert path.stat().st_ino == inode  # not removed, not replaced
        assert ask(running) == "action=OK\n\n"
        assert running.stop() == 0


def test_listen_path_that_is_not_a_socket_is_refused(tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("precious\n")
    done = run_hapolicy(["--listen", f"unix:{path}", "-s", "A=127.0.0.1:1",
                         "--syslog-socket", ""])
    assert done.returncode == 2
    assert done.stderr == (f"hapolicy: error: listen address unix:{path}: "
                           "exists and is not a socket\n")
    assert path.read_text() == "precious\n"


def test_a_reload_changes_the_socket_mode_but_never_through_a_symlink():
    with FakeBackend(action="OK") as backend:
        daemon = unix_daemon(backend)
        conf = daemon.dir / "hapolicy.conf"
        conf.write_text("socket-mode = 0600\n")
        daemon.args += ["-c", str(conf)]
        with daemon:
            path = Path(daemon.listen[5:])
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            conf.write_text("socket-mode = 0660\n")
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded:")
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            victim = daemon.dir / "victim"
            victim.write_text("secret\n")
            os.chmod(victim, 0o600)
            path.rename(daemon.dir / "moved.sock")  # the postfix user's doing
            path.symlink_to(victim)
            conf.write_text("socket-mode = 0666\n")
            daemon.send(signal.SIGHUP)
            daemon.log.wait("reloaded:", count=2)
            assert stat.S_IMODE(victim.stat().st_mode) == 0o600
            assert daemon.log.matching(f"reload: {daemon.listen} is no longer our socket")
            assert daemon.stop() == 0
            assert path.is_symlink()  # not ours: left alone
            daemon.assert_clean_output()
