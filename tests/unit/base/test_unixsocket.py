"""Unix socket files that root makes in a directory another user may write (unixsocket.py and
its users: listener.py, control.py, daemon.remove_stale_socket): a symlink or another socket
put at the socket's path at the worst moment never makes root change, or connect to, the file
it points to, and is never taken for ours.

In-process. The attack is what an inotify watcher in the socket's directory does: as soon as
the socket is bound, the path becomes a symlink to a victim file (mode 0600, owned by nobody),
or another socket; socket.socket.bind is wrapped to do it at that moment. The bind then fails
with one line, and the victim keeps its mode and owner. A reload that changes socket-mode
finds a symlink (or another socket) where its socket was: it leaves it alone.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testkit.logs import ListLogger

from hapolicy.config.records import Config, ConfigError
from hapolicy.daemon.chores import remove_stale_socket
from hapolicy.daemon.listener import Listener
from hapolicy.daemon.monitorsockets import bind_control

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid
DAEMON_GROUP = grp.getgrnam("daemon").gr_gid


@pytest.fixture
def where() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(where: Path) -> Path:
    """A file only its owner (nobody, group daemon) may read: what the symlink points to."""
    path = where / "victim"
    path.write_text("secret\n")
    os.chown(path, NOBODY, DAEMON_GROUP)
    os.chmod(path, 0o600)
    return path


def assert_untouched(victim: Path) -> None:
    info = victim.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == \
        (0o600, NOBODY, DAEMON_GROUP)


def swap_after_bind(monkeypatch: pytest.MonkeyPatch, path: Path, victim: Path) -> None:
    """Once a socket is bound at path, make path a symlink to victim (the socket's file gone)."""
    real = socket.socket.bind

    def bind(sock: socket.socket, address: object) -> None:
        real(sock, address)
        if address == str(path):
            os.unlink(path)
            os.symlink(victim, path)

    monkeypatch.setattr(socket.socket, "bind", bind)


def failure(bind: Callable[[], object]) -> str:
    """The one line bind fails with; "" when it does not."""
    try:
        bind()
    except (OSError, ConfigError) as exc:
        return exc.strerror if isinstance(exc, OSError) else str(exc)
    return ""


def assert_our_socket(path: Path, mode: int, gid: int = 0) -> None:
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, os.geteuid(), gid)


def test_a_symlink_swapped_in_after_bind_is_never_followed(monkeypatch, where, victim):
    plain = where / "plain"
    listener = Listener(f"unix:{plain}")
    listener.bind(Config(socket_mode=0o660))  # unharmed: its mode through its descriptor
    try:
        assert_our_socket(plain, 0o660)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(plain))
        assert listener.sock.accept()[0].recv(1) == b""  # the probe's connection is gone
    finally:
        listener.cleanup_quietly()
    assert not plain.exists()
    path = where / "policy"
    swap_after_bind(monkeypatch, path, victim)
    listener = Listener(f"unix:{path}")
    error = failure(lambda: listener.bind(Config(socket_mode=0o666)))
    assert_untouched(victim)
    assert error == "its file was replaced by another at once (left as it is)"
    assert path.is_symlink() and listener.sock is None


def test_another_socket_swapped_in_after_bind_is_not_taken_for_ours(monkeypatch, where):
    path = where / "policy"
    with socket.socket(socket.AF_UNIX) as theirs:
        real = socket.socket.bind

        def bind(sock: socket.socket, address: object) -> None:
            real(sock, address)
            if address == str(path):
                os.unlink(path)
                real(theirs, str(path))
                theirs.listen(1)
                os.chown(path, NOBODY, DAEMON_GROUP)
                os.chmod(path, 0o600)

        monkeypatch.setattr(socket.socket, "bind", bind)
        listener = Listener(f"unix:{path}")
        error = failure(lambda: listener.bind(Config(socket_mode=0o666)))
        info = os.lstat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == \
            (0o600, NOBODY, DAEMON_GROUP)
        assert error.startswith("its file was replaced by another")


def test_the_control_socket_with_a_symlink_swapped_in_after_bind(monkeypatch, where, victim):
    plain = where / "plain"
    control = bind_control(Config(control=str(plain), control_group="nogroup"))
    try:
        assert_our_socket(plain, 0o660, NOGROUP)  # unharmed: group and mode as asked
    finally:
        control.close()
    assert not plain.exists()
    path = where / "control"
    swap_after_bind(monkeypatch, path, victim)
    error = failure(lambda: bind_control(Config(control=str(path), control_group="nogroup")))
    assert_untouched(victim)
    assert error.startswith(f"control socket {path}: its file was replaced by another")
    assert path.is_symlink()


def test_a_reload_changes_the_mode_of_its_socket_only(where, victim):
    path = where / "policy"
    listener = Listener(f"unix:{path}")
    listener.bind(Config(socket_mode=0o666))
    log = ListLogger()
    try:
        listener.apply(Config(socket_mode=0o666), Config(socket_mode=0o640), log)
        assert_our_socket(path, 0o640)
        assert log.lines == []
        ours = where / "ours"
        os.rename(path, ours)
        os.symlink(victim, path)  # before a reload that changes socket-mode
        listener.apply(Config(socket_mode=0o640), Config(socket_mode=0o666), log)
        assert_untouched(victim)
        assert log.lines == [f"warning: reload: unix:{path} is no longer our socket: its mode "
                             "is left as it is"]
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(str(path))  # another socket: left alone too
            os.chmod(path, 0o600)
            listener.apply(Config(socket_mode=0o666), Config(socket_mode=0o644), log)
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            listener.cleanup_quietly()
            assert stat.S_ISSOCK(os.lstat(path).st_mode)  # not ours: not removed
    finally:
        listener.cleanup_quietly()
    assert_untouched(victim)


def test_a_symlink_at_the_path_is_refused_and_never_connected_to(where):
    live = where / "live"
    with socket.socket(socket.AF_UNIX) as target:
        target.bind(str(live))
        target.listen(1)
        target.setblocking(False)
        path = where / "policy"
        os.symlink(live, path)
        with pytest.raises(ConfigError, match="exists and is not a socket"):
            remove_stale_socket(str(path))
        with pytest.raises(BlockingIOError):
            target.accept()  # nobody connected to it
        assert path.is_symlink()
