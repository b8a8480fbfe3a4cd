"""The state file of spawn mode (hapolicy.spawn.statefile), in-process: where it is, when a file is
used, replaced or refused, and that processes starting together end on one file.

Every case ends either with a usable table mapped from a fresh, private regular file (the old
one replaced) or with no table and one line saying why; never with an exception, and never
with a table read from a file that was not made for these services in this boot.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from hapolicy.config.records import parse_service
from hapolicy.spawn import statefile
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import DOWN, DOWN_SINCE, DOWN_UNTIL, SLOT, UP

SERVICES = (parse_service("A=127.0.0.1:10023:10:2"), parse_service("B=127.0.0.1:10024:10:1"))
OTHERS = (parse_service("A=127.0.0.1:10025:10:2"), parse_service("B=127.0.0.1:10024:10:1"))
SIZE = statefile.file_bytes(len(SERVICES))

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user")


def opened(path: Path, services=SERVICES) -> tuple[HealthTable | None, str]:
    return statefile.open_table(str(path), services)


def usable(path: Path) -> bool:
    """A private regular file of ours with the header of SERVICES in this boot."""
    st = os.lstat(path)
    expected = statefile.header(SERVICES, statefile.boot_digest())
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == SIZE
            and path.read_bytes()[:statefile.HEADER_BYTES] == expected)


def test_the_default_place_is_per_user_and_per_service_list():
    name = "health-" + statefile.digest(SERVICES).hex()
    assert statefile.default_path(SERVICES, {"XDG_RUNTIME_DIR": "/run/user/7"}, 7) == \
        f"/run/user/7/hapolicy/{name}"
    assert statefile.default_path(SERVICES, {}, 65534) == f"/tmp/hapolicy-65534/{name}"
    assert statefile.default_path(SERVICES, {"XDG_RUNTIME_DIR": "relative"}, 3) == \
        f"/tmp/hapolicy-3/{name}"
    assert statefile.default_path(OTHERS, {}, 3) != statefile.default_path(SERVICES, {}, 3)


def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int = 0o755) -> Path:
    """A stand-in for /run/hapolicy/spawn, this user's, with mode."""
    directory = tmp_path / "run-hapolicy-spawn"
    directory.mkdir()
    directory.chmod(mode)
    monkeypatch.setattr(statefile, "RUN_DIR", str(directory))
    return directory


def test_the_default_place_is_the_run_directory_when_it_is_the_users_own(tmp_path, monkeypatch):
    name = "health-" + statefile.digest(SERVICES).hex()
    directory = run_dir(tmp_path, monkeypatch)
    me = os.geteuid()
    assert statefile.default_path(SERVICES, {"XDG_RUNTIME_DIR": "/run/user/7"}, me) == \
        f"{directory}/{name}"
    assert statefile.default_path(SERVICES, {}, me) == f"{directory}/{name}"
    # another user's (the user we would run as is not its owner): the places of before
    assert statefile.default_path(SERVICES, {}, me + 1) == f"/tmp/hapolicy-{me + 1}/{name}"
    table, note = statefile.open_table("", SERVICES)
    assert table is not None and note == ""
    assert [p.name for p in directory.iterdir()] == [name]
    assert usable(directory / name)
    table.close()


@pytest.mark.parametrize("spoil", ["group_writable", "world_writable", "symlink", "missing",
                                   "a_file"])
def test_a_run_directory_not_safe_is_not_the_default_place(tmp_path, monkeypatch, spoil):
    name = "health-" + statefile.digest(SERVICES).hex()
    directory = run_dir(tmp_path, monkeypatch)
    if spoil == "group_writable":
        directory.chmod(0o775)
    elif spoil == "world_writable":
        directory.chmod(0o1777)
    else:
        directory.rmdir()
        if spoil == "symlink":
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir(mode=0o755)
            directory.symlink_to(elsewhere)
        elif spoil == "a_file":
            directory.write_text("")
    me = os.geteuid()
    assert statefile.default_path(SERVICES, {}, me) == f"/tmp/hapolicy-{me}/{name}"
    assert statefile.default_path(SERVICES, {"XDG_RUNTIME_DIR": str(tmp_path)}, me) == \
        f"{tmp_path}/hapolicy/{name}"


def test_a_new_file_is_made_private_and_every_opener_shares_it(tmp_path):
    path = tmp_path / "state"
    first, note = opened(path)
    assert first is not None and note == ""
    assert usable(path)
    second, note = opened(path)
    assert second is not None and note == ""
    first.record_failure(1, 100.0, 2.0, 60.0)
    first.add_served(0, 0.5)
    assert second.state(1, 101.0) == DOWN and second.state(0, 101.0) == UP
    assert second.served(0) == 0.5
    inode = path.stat().st_ino
    assert opened(path)[0] is not None and path.stat().st_ino == inode  # in use: kept
    first.close()
    second.close()


def test_processes_that_start_together_end_on_one_file(tmp_path):
    path = tmp_path / "state"
    count = 12
    services = tuple(parse_service(f"S{i}=127.0.0.1:{20000 + i}") for i in range(count))
    go_r, go_w = os.pipe()
    pids = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:  # each one writes a word of its own, once it opened the file
            try:
                os.close(go_w)
                os.read(go_r, 1)
                table, _note = statefile.open_table(str(path), services)
                table.f[i * SLOT + DOWN_SINCE] = i + 1.0
                os._exit(0)
            finally:
                os._exit(1)
        pids.append(pid)
    os.close(go_r)
    os.close(go_w)  # EOF: they all start at once
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
    table, note = statefile.open_table(str(path), services)
    assert note == ""
    assert [table.down_since(i) for i in range(count)] == [i + 1.0 for i in range(count)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def corrupt(path: Path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset:offset + len(data)] = data
    path.write_bytes(bytes(content))


CASES = {
    # name: (how to spoil the file made for SERVICES, the reason said)
    "garbage": (lambda p: p.write_bytes(b"x" * SIZE), "not a hapolicy state file"),
    "zero_length": (lambda p: p.write_bytes(b""), "empty"),
    "truncated_header": (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated (40 bytes)"),
    "truncated_table": (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated (100 bytes)"),
    "too_long": (lambda p: p.write_bytes(p.read_bytes() + bytes(64)), f"of {SIZE + 64} bytes"),
    "other_layout": (lambda p: corrupt(p, 16, (99).to_bytes(4, "little")), "of layout 99"),
    "earlier_boot": (lambda p: corrupt(p, 32, b"\x01" * 16), "of an earlier boot"),
    "unknown_header": (lambda p: corrupt(p, 28, b"\x01"), "with an unknown header"),
    "world_writable": (lambda p: p.chmod(0o666), "writable by others (mode 0666)"),
    "group_writable": (lambda p: p.chmod(0o620), "writable by others (mode 0620)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_spoilt_file_is_replaced(case, tmp_path):
    path = tmp_path / "state"
    opened(path)[0].close()
    spoil, reason = CASES[case]
    spoil(path)
    table, note = opened(path)
    assert table is not None
    assert note.startswith(f"state file {path}: {reason}") and note.endswith(": replaced"), note
    assert usable(path)
    assert table.state(0, 1.0) == UP  # a new table, not the garbage


def test_a_file_of_another_service_list_is_replaced_not_read(tmp_path):
    path = tmp_path / "state"
    theirs, _ = opened(path, OTHERS)
    theirs.record_failure(0, 100.0, 1e9, 1e9)
    ours, note = opened(path)
    assert note == f"state file {path}: of another service list: replaced"
    assert ours.state(0, 101.0) == UP
    assert usable(path)


def test_a_symbolic_link_is_not_followed_but_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "state"
    path.symlink_to(victim)
    table, note = opened(path)
    assert table is not None
    assert note == f"state file {path}: a symbolic link (not followed): replaced"
    assert victim.read_bytes() == b"precious"
    assert usable(path) and not path.is_symlink()


@requires_root
def test_a_device_is_never_replaced(tmp_path):
    """`--state-file /dev/null` must not turn /dev/null into a file (here a copy of it)."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    table, note = opened(null)
    assert table is None and "which is not replaced" in note
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


@requires_root
def test_a_file_of_another_user_is_replaced(tmp_path):
    path = tmp_path / "state"
    opened(path)[0].close()
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    table, note = opened(path)
    assert table is not None
    assert note == f"state file {path}: owned by uid {nobody.pw_uid}: replaced"
    assert usable(path)


def test_what_cannot_be_used_or_made_gives_no_table_and_one_line(tmp_path):
    (tmp_path / "dir").mkdir()
    table, note = opened(tmp_path / "dir")
    assert table is None
    assert note == (f"state file {tmp_path / 'dir'}: a directory, which is not replaced; "
                    "this process keeps a health table of its own")
    os.mkfifo(tmp_path / "fifo")
    table, note = opened(tmp_path / "fifo")
    assert table is None and "not a regular file, which is not replaced" in note
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    table, note = opened(tmp_path / "no" / "such" / "state")
    assert table is None and "cannot open directory" in note and "\n" not in note


def test_a_directory_that_stays_locked_is_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(statefile, "LOCK_WAIT", 0.05)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        table, note = opened(tmp_path / "state")
        assert table is None and "stayed locked by another process" in note
    finally:
        os.close(fd)
    assert opened(tmp_path / "state")[0] is not None


def default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "hapolicy"


def test_the_default_directory_is_made_private(tmp_path, monkeypatch):
    directory = default_dir(tmp_path, monkeypatch)
    table, note = statefile.open_table("", SERVICES)
    assert table is not None and note == ""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [p.name for p in directory.iterdir()] == ["health-" + statefile.digest(SERVICES).hex()]


def test_a_default_directory_that_is_not_safe_is_not_used(tmp_path, monkeypatch):
    directory = default_dir(tmp_path, monkeypatch)
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)
    table, note = statefile.open_table("", SERVICES)
    assert table is None and f"directory {directory} is writable by others (mode 0777)" in note
    directory.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    directory.symlink_to(elsewhere)
    table, note = statefile.open_table("", SERVICES)
    assert table is None and "a symbolic link (not followed)" in note
    assert list(elsewhere.iterdir()) == []


@requires_root
def test_a_default_directory_of_another_user_is_not_used(tmp_path, monkeypatch):
    directory = default_dir(tmp_path, monkeypatch)
    directory.mkdir(mode=0o700)
    os.chown(directory, pwd.getpwnam("nobody").pw_uid, -1)
    table, note = statefile.open_table("", SERVICES)
    assert table is None and "is owned by uid" in note


def test_without_a_boot_id_no_file_is_used(tmp_path, monkeypatch):
    """A file kept over a reboot would hold the monotonic times of the boot before: without
    the kernel's boot id nothing tells them apart, so no file (and a line saying why)."""
    monkeypatch.setattr(statefile, "BOOT_ID", str(tmp_path / "no-such-boot-id"))
    table, why = opened(tmp_path / "state")
    assert table is None and "no boot id" in why and "a health table of its own" in why
    assert not (tmp_path / "state").exists()


def test_a_probe_claimed_while_another_process_probed_and_failed_is_refused(tmp_path):
    """Claiming a probe re-reads the service under the lock: another process that took the
    lock first, probed, failed and gave a new cool-down leaves no probe to claim."""
    table, _ = opened(tmp_path / "state")
    assert table is not None
    table.f[DOWN_UNTIL] = 1.0  # service A: its cool-down long over, no probe out
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other process: holds A's probe lock, "probes", fails, lets go
        try:
            fcntl.lockf(table.probe_lock, fcntl.LOCK_EX, 1, 0)
            os.write(ready_w, b"x")
            time.sleep(0.3)
            table.record_failure(0, time.monotonic(), 5.0, 5.0)
            fcntl.lockf(table.probe_lock, fcntl.LOCK_UN, 1, 0)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    assert table.claim_probe(0, time.monotonic(), 10.0) is False  # waited, then saw it
    os.waitpid(pid, 0)
    assert table.state(0, time.monotonic()) == DOWN
    table.close()
