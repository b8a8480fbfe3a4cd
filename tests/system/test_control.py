"""The control socket (control.py, commands.py) and hapolicyctl (ctl.py) against a live daemon.

Two FakeBackends under a little load: `status` and `csv` show counters that move and add up
with what the backends counted; `disable` takes a service out of every worker at once (no
request reaches it afterwards), `enable` brings it back, and a HUP keeps the admin state. The
socket refuses a peer of another uid, a garbage line, a 10 MB line and a client that never
finishes its line, while the daemon keeps answering requests. With --control-group the socket
is mode 0660 and that group's members are let in; a user outside it is refused by the mode,
and by SO_PEERCRED when the mode would let it connect.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import time

from testkit.backends import FakeBackend
from testkit.ctl import Load, ask_all, csv_rows, ctl, disable_under_load, read_all
from testkit.daemon import Daemon
from testkit.wait import wait_for

from hapolicy.monitor.oneshot import HEAD_SECONDS


def test_counters_disable_enable_and_hup():
    with FakeBackend(name="A") as a, FakeBackend(name="B") as b:
        daemon = Daemon("-s", a.spec(prio=10), "-s", b.spec(prio=10), workers=2)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            ask_all(daemon, 40)
            rows = csv_rows(path)
            assert set(rows) == {"default/A", "default/B"}
            assert int(rows["default/A"]["answers"]) == len(a.live_requests) > 0
            assert int(rows["default/B"]["answers"]) == len(b.live_requests) > 0
            assert sum(int(r["answers"]) for r in rows.values()) == 40
            status = ctl("--control", path, "status")
            assert status.returncode == 0
            assert status.stdout.split("\n")[0].split() == [
                "pool", "service", "address", "state", "admin", "weight", "answers", "failures",
                "p50_ms", "p99_ms", "last_change"]  # no pool hedges or has a shadow
            with Load(daemon) as load:
                before_a, before_b = disable_under_load(path, "default/A", a, b)
                assert csv_rows(path)["default/A"]["admin"] == "disabled"
                daemon.send(signal.SIGHUP)
                time.sleep(1.5)
                wait_for(lambda: len(b.live_requests) > before_b + 150, 10, what="load on B")
                assert len(a.live_requests) == before_a
                assert csv_rows(path)["default/A"]["admin"] == "disabled"
                assert ctl("--control", path, "enable", "default/A").returncode == 0
                wait_for(lambda: len(a.live_requests) > before_a + 20, 10, what="load on A")
                assert csv_rows(path)["default/A"]["admin"] == "enabled"
            assert load.answers > 200 and not load.bad
            workers = ctl("--control", path, "workers")
            assert workers.returncode == 0 and workers.stdout.startswith("pid")
            assert len(workers.stdout.splitlines()) >= 3
        assert not os.path.exists(path)


def as_user(path: str, user: str = "nobody") -> bytes:
    """What a client of this user (and only its primary group) reads from the control
    socket after sending `status`."""
    nobody = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                try:
                    sock.sendall(b"status\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused, and closed, before the line was sent: the answer waits
                os.write(w, sock.recv(4096))
        except BaseException as exc:  # noqa: BLE001
            os.write(w, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return data


def test_bad_peers_and_bad_lines():
    with FakeBackend(name="A") as a:
        daemon = Daemon("-s", a.spec(), workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start(), Load(daemon) as load:
            os.chmod(daemon.dir, 0o755)
            os.chmod(path, 0o666)  # let nobody connect: SO_PEERCRED must still refuse it
            assert as_user(path) == b"error: not allowed\n"
            for line, error in ((b"garbage\n", b"error: unknown command"),
                                (b"disable nosuchpool/A\n", b"error: no pool"),
                                (b"disable default/NOPE\n", b"error: no service"),
                                (b"disable A\n", b"error: 'A' is not POOL/SERVICE"),
                                (b"\xff\xfe\n", b"error: not an ASCII line")):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(path)
                    sock.sendall(line)
                    assert read_all(sock).startswith(error), line
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                try:
                    sock.sendall(b"x" * 10_000_000)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                assert read_all(sock).startswith(b"error: line longer than 4096 bytes")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)  # `printf status | socat - UNIX:PATH`: no newline, then EOF
                sock.connect(path)
                sock.sendall(b"workers")
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock).startswith(b"pid")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(HEAD_SECONDS + 25)
                sock.connect(path)
                sock.sendall(b"stat")
                assert read_all(sock).startswith(
                    b"error: no command line (for ask: no request ended by an empty line) "
                    b"within 2s")
            result = ctl("--control", path, "nonsense")
            assert result.returncode == 1 and result.stdout.startswith("error:")
            assert ctl("--control", path).returncode == 2
            assert ctl("--control", str(daemon.dir / "nothere"), "status").returncode == 2
            conf = daemon.dir / "hapolicy.conf"
            conf.write_text(f"# a config\ncontrol = {path}\n")
            assert ctl("-c", str(conf), "status").returncode == 0
            assert daemon.proc.poll() is None
        assert load.answers > 100 and not load.bad


def test_the_control_group_is_let_in_and_others_are_not():
    with FakeBackend(name="A") as a:
        daemon = Daemon("-s", a.spec(), workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path, "--control-group", "nogroup"]
        with daemon.start():
            os.chmod(daemon.dir, 0o755)
            info = os.stat(path)
            assert stat.S_IMODE(info.st_mode) == 0o660
            assert info.st_gid == grp.getgrnam("nogroup").gr_gid
            assert as_user(path, "nobody").startswith(b"pool ")  # its group is nogroup
            assert b"PermissionError" in as_user(path, "daemon")  # the file's mode says no
            os.chmod(path, 0o666)  # and if the mode let it connect, SO_PEERCRED says no
            assert as_user(path, "daemon") == b"error: not allowed\n"
