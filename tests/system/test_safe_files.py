"""The files root writes and reads where another user may write (issue 27), in-process.

* The pidfile and the daemon's --state-file are written through a fresh temporary file
  (safefile.replace_file): symbolic links made in advance at the names the old code used (the
  pidfile's `PATH.PID` for the coming pids, the state file's `PATH.tmpPID`) are not followed,
  and a file made there by another user is not reused; root's file at the end of the link and
  the other user's file are left as they were, the target is root's with the mode asked.
* The daemon's --state-file is applied only when it is a regular file of root (or of the
  user the master runs as) that no one else may write: another user's, or a world- or
  group-writable one, is ignored with a warning, and replaced by root's at the first save; the
  same rule as spawn mode's state file (safefile.distrust). One test against a live daemon.
* The pidfile is read without following a symbolic link and without blocking on a fifo (it is
  read at start, before anything else).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon, short_tmpdir
from testkit.ports import HOST
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO, hapolicy_env
from testkit.wait import wait_for

from hapolicy.base import safefile
from hapolicy.config.records import Config, parse_service
from hapolicy.daemon import chores as daemon
from hapolicy.daemon.adminstate import AdminFile
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DISABLED

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user")
NOBODY = "nobody"


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda message: self.lines.append(f"{level}: {message}")


def shared_directory(tmp_path: Path) -> Path:
    """A directory anyone may write, as /tmp (sticky)."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


def root_only_file(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's own\n")
    victim.chmod(0o600)
    return victim


def test_the_pidfile_follows_no_link_made_for_the_coming_pids(tmp_path):
    directory = shared_directory(tmp_path)
    victim = root_only_file(tmp_path)
    pidfile = directory / "hapolicy.pid"
    me = os.getpid()
    for pid in range(max(2, me - 5), me + 50):  # what another user can make in advance
        (directory / f"hapolicy.pid.{pid}").symlink_to(victim)
    daemon.write_pidfile(str(pidfile))
    assert victim.read_bytes() == b"root's own\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    st = os.lstat(pidfile)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert pidfile.read_text() == f"{me}\n"
    assert daemon.read_pid(str(pidfile)) == me
    # nothing of ours left beside it: the links are the other user's, as they were
    assert sorted(p.name for p in directory.iterdir() if not p.is_symlink()) == ["hapolicy.pid"]


def test_a_link_at_the_pidfile_is_neither_read_nor_followed(tmp_path):
    directory = shared_directory(tmp_path)
    other = tmp_path / "other.pid"
    other.write_text("4242\n")
    pidfile = directory / "hapolicy.pid"
    pidfile.symlink_to(other)
    assert daemon.read_pid(str(pidfile)) == 0  # no pid of a process that is not ours
    daemon.write_pidfile(str(pidfile))
    assert other.read_text() == "4242\n"
    assert not pidfile.is_symlink() and pidfile.read_text() == f"{os.getpid()}\n"


def test_a_fifo_at_the_pidfile_does_not_hang_the_start(tmp_path):
    """check_pidfile runs before anything else at start: a fifo there must not block it."""
    fifo = tmp_path / "hapolicy.pid"
    os.mkfifo(fifo)
    code = "import sys; from hapolicy.daemon.chores import check_pidfile; check_pidfile(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo)],
        cwd=REPO, env=hapolicy_env(), capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0 and done.stderr == "", done


@pytest.mark.parametrize("text", ["99999999999999999999\n", "-1\n", "0\n", "4194305\n"])
def test_a_pidfile_that_holds_no_pid_is_none(tmp_path, text):
    """os.kill(99999999999999999999, 0) raises OverflowError: the start checked such a
    pidfile with a traceback."""
    pidfile = tmp_path / "hapolicy.pid"
    pidfile.write_text(text)
    assert daemon.read_pid(str(pidfile)) == 0
    daemon.check_pidfile(str(pidfile))  # no error: no daemon runs


def test_a_stale_socket_is_removed_only_while_its_name_is_the_file_checked(tmp_path,
                                                                          monkeypatch):
    """remove_stale_socket checks the file through a handle; a file put at the name between
    that check and the removal is not removed."""
    import socket

    path = tmp_path / "s"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on
    lstat = os.lstat

    def swapped(name, *args, **kwargs):  # the name is replaced just before the removal
        if str(name) == str(path) and not (tmp_path / "other").exists():
            os.rename(path, tmp_path / "moved")
            (tmp_path / "other").write_text("not a socket of ours")
            os.symlink(tmp_path / "other", path)
        return lstat(name, *args, **kwargs)

    monkeypatch.setattr(daemon.os, "lstat", swapped)
    daemon.remove_stale_socket(str(path))
    assert path.is_symlink() and (tmp_path / "other").read_text() == "not a socket of ours"


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a-directory"
    target.mkdir()  # cannot be renamed over
    with pytest.raises(OSError):
        safefile.replace_file(str(target), b"x", 0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["a-directory"]


def one_service_config() -> tuple[Config, dict[str, HealthTable]]:
    config = Config(services=(parse_service("A=h:1"),))
    return config, {"default": HealthTable(1, shared=False)}


@requires_root
def test_the_state_file_reuses_no_temporary_file_made_in_advance(tmp_path):
    directory = shared_directory(tmp_path)
    path = directory / "admin.state"
    nobody = pwd.getpwnam(NOBODY).pw_uid
    premade = directory / f"admin.state.tmp{os.getpid()}"  # the old code's temporary name
    premade.write_bytes(b"the other user's\n")
    premade.chmod(0o666)
    os.chown(premade, nobody, -1)
    linked = directory / f"admin.state.tmp-{os.getpid()}"
    victim = root_only_file(tmp_path)
    linked.symlink_to(victim)
    config, health = one_service_config()
    admin = AdminFile(str(path), Log())
    admin.restore(config, health)
    health["default"].set_admin(0, DISABLED)
    admin.save_if_changed(config, health)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert path.read_text().splitlines()[1:] == ["default A h:1 disabled -"]
    assert premade.read_bytes() == b"the other user's\n" and premade.stat().st_uid == nobody
    assert victim.read_bytes() == b"root's own\n"


# -- finding 5: the daemon's --state-file is trusted only if root's (or ours) and private ------

DISABLE_A = "# hapolicy admin state: POOL SERVICE ADDRESS ADMIN WEIGHT\ndefault A {address} disabled -\n"


def foreign_state(path: Path, address: str, case: str) -> None:
    """A state file that disables A, as another user could leave it in a shared directory."""
    path.write_text(DISABLE_A.format(address=address))
    owner, mode = {"other_user": (pwd.getpwnam(NOBODY).pw_uid, 0o600),
                   "world_writable": (0, 0o666), "group_writable": (0, 0o620)}[case]
    os.chown(path, owner, -1)
    path.chmod(mode)


def is_roots_and_private(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600


@requires_root
@pytest.mark.parametrize("case", ["other_user", "world_writable", "group_writable"])
def test_a_state_file_not_roots_or_writable_by_others_is_ignored_then_replaced(tmp_path, case):
    path = shared_directory(tmp_path) / "admin.state"
    foreign_state(path, "h:1", case)
    why = {"other_user": f"owned by uid {pwd.getpwnam(NOBODY).pw_uid}",
           "world_writable": "writable by others (mode 0666)",
           "group_writable": "writable by others (mode 0620)"}[case]
    config, health = one_service_config()
    log = Log()
    admin = AdminFile(str(path), log)
    admin.restore(config, health)
    assert health["default"].admin(0) == "enabled"
    assert log.lines == [f"warning: state file {path}: {why}: ignored"]
    admin.save_if_changed(config, health)  # the master's first pass, within a second of start
    assert is_roots_and_private(path)
    assert path.read_text() == "# hapolicy admin state: POOL SERVICE ADDRESS ADMIN WEIGHT\n"


@requires_root
def test_the_daemon_applies_no_state_file_of_another_user(tmp_path):
    """The master as root: another user's file that disables the one service is not applied
    (every request would get the default), and is replaced by root's within seconds."""
    where = shared_directory(Path(short_tmpdir()))
    path = where / "admin.state"
    try:
        with FakeBackend(action="FROM-A", name="A") as backend:
            foreign_state(path, f"{backend.host}:{backend.port}", "other_user")
            with Daemon("-s", f"A={backend.host}:{backend.port}", "-d", "DEFAULT",
                        "--state-file", str(path), workers=1) as daemon:
                with PolicyClient(HOST, daemon.port) as client:
                    assert client.ask(request()) == "action=FROM-A\n\n"
                wait_for(lambda: is_roots_and_private(path), 10, what="root's state file")
                assert f"state file {path}: owned by uid " in daemon.log.text()
                assert "state file: service default/A disabled" not in daemon.log.text()
    finally:
        shutil.rmtree(where.parent, ignore_errors=True)
