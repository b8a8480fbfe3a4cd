"""Spawn mode's shared health, end to end: real `python -m hapolicy` processes against fake
services on 127.0.0.1, each process with one socket as its fds 0, 1 and 2 (scripts/testkit/spawn.py),
so that comparing the stream with the answers proves nothing else was written.

* Processes of one service list share the table: a silent service found dead by the first is
  skipped at once by the next ones, probed by one process after its cool-down, and used again
  once it answers; each change is logged once over all processes.
* Twenty processes at once split 2:1 weights 2:1 over all of them, every pick counted in one
  file. They run at nice 19: their start is a burst of CPU that would otherwise delay the
  timing-sensitive tests that pytest-xdist runs beside this one.
* A state file truncated under a live session (a process of the same user can) costs that
  session its sharing, not its next answer (SIGBUS).
* A spoilt state file (a symbolic link, another user's, world-writable, garbage, truncated, of
  another service list) is replaced; one in a directory that cannot be written is not used,
  and the process keeps its own table. Answers stay the same and nothing else reaches the
  stream. These run as nobody with /usr/bin/python3, as spawn(8) runs hapolicy.

Timing bounds are generous: "at once" is under 0.5 s against a 1 s timeout.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.packages import require_packages
from testkit.protocol import request
from testkit.public import world_readable_copy
from testkit.repo import REPO
from testkit.spawn import Spawned
from testkit.syslog import SyslogReceiver

from hapolicy.config.parsers import parse_service
from hapolicy.spawn import statefile

OK = "action=OK\n\n"


@pytest.fixture
def syslog() -> Iterator[SyslogReceiver]:
    collector = SyslogReceiver()
    yield collector
    collector.close()


def started(args: list[str], syslog: SyslogReceiver) -> Spawned:
    """A spawned process that has answered an empty request (so it runs and has its table)."""
    proc = Spawned(["--syslog-socket", syslog.path, *args])
    assert proc.ask(b"\n", 20) == "action=dunno\n\n"
    return proc


def timed(proc: Spawned, instance: str) -> tuple[str, float]:
    begin = time.monotonic()
    answer = proc.ask(request(instance=instance), 20)
    return answer, time.monotonic() - begin


def test_a_dead_service_costs_one_timeout_for_all_processes(tmp_path, syslog) -> None:
    with FakeBackend("silent", name="mute") as mute, FakeBackend(action="OK", name="good") as good:
        args = ["--cooldown", "1", "--cooldown-max", "1", "--state-file", str(tmp_path / "state"),
                "-s", mute.spec(prio=1, weight=1, timeout=1), "-s", good.spec(prio=2)]
        procs = [started(args, syslog) for _ in range(6)]
        try:
            answer, first = timed(procs[0], "i0")
            assert answer == OK and 1.0 <= first < 1.5
            found_dead = time.monotonic()
            for n, proc in enumerate(procs[1:4], 1):  # other processes: straight to `good`
                answer, elapsed = timed(proc, f"i{n}")
                assert answer == OK and elapsed < 0.5, (n, elapsed)
            assert len(mute.requests) == 1
            # after the cool-down one of two processes asking together probes, the other not
            time.sleep(max(0.0, found_dead + 1.1 - time.monotonic()))
            results: dict[int, tuple[str, float]] = {}
            askers = [threading.Thread(target=lambda n=n: results.update({n: timed(procs[n],
                                                                                   f"i{n}")}))
                      for n in (4, 5)]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join(10)
            times = sorted(elapsed for _, elapsed in results.values())
            assert [a for a, _ in results.values()] == [OK, OK]
            assert times[0] < 0.5 and 1.0 <= times[1] < 1.5, times
            assert len(mute.requests) == 2
            # the service answers again: after the cool-down a new process probes, and uses it
            mute.set_mode("answer", action="MUTE")
            time.sleep(1.1)
            for n in (6, 7):
                proc = started(args, syslog)
                procs.append(proc)
                answer, elapsed = timed(proc, f"i{n}")
                assert answer == "action=MUTE\n\n" and elapsed < 0.5
        finally:
            for proc in procs:
                proc.close()
    lines = syslog.wait_for(lambda ls: any(" up" in line for line in ls))
    assert len([line for line in lines if "service mute" in line and " down: " in line]) == 1
    assert len([line for line in lines if "service mute" in line and line.endswith(" up")]) == 1
    assert not any("health table of its own" in line for line in lines)


def test_twenty_processes_at_once_split_two_to_one_over_all_of_them(tmp_path, syslog) -> None:
    path = tmp_path / "state"
    with FakeBackend(action="HEAVY", name="heavy") as heavy, \
            FakeBackend(action="LIGHT", name="light") as light:
        specs = [heavy.spec(prio=5, weight=2), light.spec(prio=5, weight=1)]
        args = ["--syslog-socket", syslog.path, "--state-file", str(path),
                "-s", specs[0], "-s", specs[1]]
        niced = ["nice", "-n", "19", sys.executable, "-m", "hapolicy"]
        procs = [Spawned(args, program=niced) for _ in range(20)]  # one makes the file
        answers: list[str] = []

        def four_requests(n: int) -> None:
            answers.extend(procs[n].ask(request(instance=f"p{n}.{k}"), 30) for k in range(4))

        try:
            askers = [threading.Thread(target=four_requests, args=(n,)) for n in range(20)]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join(60)
        finally:
            for proc in procs:
                proc.close()
        assert sorted(set(answers)) == ["action=HEAVY\n\n", "action=LIGHT\n\n"]
        assert len(heavy.requests) + len(light.requests) == 80
        # 53.3 of 80 to heavy; a process that picks on clocks another has just moved may send
        # one more to either, and on a loaded machine an increment of the lock-free clocks is
        # lost now and then (health.py says why that is benign)
        assert 47 <= len(heavy.requests) <= 59, (len(heavy.requests), len(light.requests))
    # the clocks count the picks of all twenty: they shared one table (a table per process
    # would leave the file with the four picks of one process at most)
    table, _ = statefile.open_table(str(path), [parse_service(s) for s in specs])
    assert table is not None
    assert 60 <= table.served(0) * 2 + table.served(1) <= 82.5
    assert not any("health table of its own" in line for line in syslog.lines)


def test_a_state_file_truncated_under_a_live_session_costs_it_no_answer(tmp_path, syslog) -> None:
    """Any process of the same user can truncate the file that the sessions map; the next
    access of a session to its table would be past the end of the file (SIGBUS, the request
    unanswered). The session sees it before its next request and goes on with memory of its
    own; a process started after makes a new file."""
    path = tmp_path / "state"
    with FakeBackend(action="OK", name="good") as good:
        args = ["--state-file", str(path), "-s", good.spec()]
        with started(args, syslog) as proc:
            assert proc.ask(request(instance="t0"), 20) == OK
            os.truncate(path, 0)
            assert proc.ask(request(instance="t1"), 20) == OK
            os.truncate(path, 10)  # no longer its memory: nothing to see
            assert proc.ask(request(instance="t2"), 20) == OK
            code, rest = proc.finish(20)
            assert (code, rest) == (0, b"")
        with started(args, syslog) as later:
            assert later.ask(request(instance="t3"), 20) == OK
            assert later.finish(20) == (0, b"")
    lines = syslog.wait_for(lambda ls: any("replaced" in line for line in ls))
    told = [line for line in lines if "state file" in line]
    assert len(told) == 2, told
    assert told[0].endswith(f"state file {path}: its size changed to 0 bytes; this process "
                            "keeps a health table of its own from now on"), told
    assert told[1].endswith(f"state file {path}: truncated (10 bytes): replaced"), told
    assert len(good.requests) == 4


# -- a spoilt state file, as nobody --------------------------------------------------------

NOBODY = "nobody"


@pytest.fixture(scope="module")
def as_nobody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a process that runs our hapolicy as nobody with /usr/bin/python3."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runs hapolicy as nobody")
    require_packages("python3")
    pypath = world_readable_copy(REPO / "hapolicy", tmp_path_factory.mktemp("pkg"))
    yield {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pypath)}


@pytest.fixture
def public(as_nobody: dict[str, str]) -> Iterator[Path]:
    """A directory under /tmp that nobody can reach: a syslog socket and state directories."""
    path = Path(tempfile.mkdtemp(prefix="hapolicy-state-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody_dir(parent: Path) -> Path:
    directory = parent / "state"
    directory.mkdir(mode=0o700)
    user = pwd.getpwnam(NOBODY)
    os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def valid_file(path: Path, services: list[str], owner: str = NOBODY) -> None:
    """A state file of these services, made as root and given to owner."""
    table, note = statefile.open_table(str(path), [parse_service(s) for s in services])
    assert table is not None, note
    table.close()
    user = pwd.getpwnam(owner)
    os.chown(path, user.pw_uid, user.pw_gid)


def symlink_to_victim(path: Path, services: list[str]) -> None:
    victim = path.parent / "victim"
    victim.write_bytes(b"precious")
    os.chown(victim, pwd.getpwnam(NOBODY).pw_uid, -1)
    path.symlink_to(victim)


def world_writable(path: Path, services: list[str]) -> None:
    valid_file(path, services)
    path.chmod(0o666)


def garbage(path: Path, services: list[str]) -> None:
    valid_file(path, services)
    path.write_bytes(os.urandom(path.stat().st_size))


def truncated(path: Path, services: list[str]) -> None:
    valid_file(path, services)
    os.truncate(path, 100)


def other_services(path: Path, services: list[str]) -> None:
    valid_file(path, [s.replace("127.0.0.1", "127.0.0.2") for s in services])


SPOILT = {
    "symlink": (symlink_to_victim, "a symbolic link (not followed)"),
    "other_user": (lambda p, s: valid_file(p, s, owner="root"), "permission denied"),
    "world_writable": (world_writable, "writable by others (mode 0666)"),
    "garbage": (garbage, "not a hapolicy state file"),
    "truncated": (truncated, "truncated (100 bytes)"),
    "other_services": (other_services, "of another service list"),
}


def run_as_nobody(env: dict[str, str], args: list[str], syslog: SyslogReceiver) -> None:
    """Three requests and EOF: three answers of the service, exit 0, not one byte more."""
    with Spawned(["--syslog-socket", syslog.path, *args], program=["/usr/bin/python3", "-m",
                                                                  "hapolicy"],
                 user=NOBODY, env=env) as proc:
        answers = [proc.ask(request(instance=f"n{k}"), 30) for k in range(3)]
        code, rest = proc.finish(30)
    assert answers == [OK] * 3
    assert (code, rest) == (0, b"")


@pytest.mark.parametrize("case", sorted(SPOILT))
def test_a_spoilt_state_file_is_replaced(case, as_nobody, public) -> None:
    syslog = SyslogReceiver(public / "log")
    try:
        with FakeBackend(action="OK", name="good") as good:
            services = [good.spec()]
            path = nobody_dir(public) / "health"
            spoil, reason = SPOILT[case]
            spoil(path, services)
            run_as_nobody(as_nobody, ["--state-file", str(path), "-s", services[0]], syslog)
        lines = syslog.wait_for(lambda ls: any("state file" in line for line in ls))
    finally:
        syslog.close()
    assert any(line.endswith(f"state file {path}: {reason}: replaced") for line in lines), lines
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == pwd.getpwnam(NOBODY).pw_uid
    header = statefile.header([parse_service(services[0])], statefile.boot_digest())
    assert path.read_bytes()[:statefile.HEADER_BYTES] == header
    if case == "symlink":
        assert (path.parent / "victim").read_bytes() == b"precious"


def test_a_state_file_in_a_directory_that_cannot_be_written_is_not_used(as_nobody,
                                                                        public) -> None:
    syslog = SyslogReceiver(public / "log")
    closed = public / "closed"
    closed.mkdir(mode=0o755)  # root's: nobody may not write here
    try:
        with FakeBackend(action="OK", name="good") as good:
            run_as_nobody(as_nobody, ["--state-file", str(closed / "health"), "-s", good.spec()],
                          syslog)
        lines = syslog.wait_for(lambda ls: any("state file" in line for line in ls))
    finally:
        syslog.close()
    (line,) = [line for line in lines if "state file" in line]
    assert line.endswith(f"state file {closed / 'health'}: cannot create health.new: permission "
                         "denied; this process keeps a health table of its own"), line
    assert list(closed.iterdir()) == []


def test_the_default_place_works_for_nobody(as_nobody, public) -> None:
    """No XDG_RUNTIME_DIR, HOME /nonexistent: /tmp/hapolicy-UID, made by the first process."""
    syslog = SyslogReceiver(public / "log")
    try:
        with FakeBackend(action="OK", name="good") as good:
            default = statefile.default_path([parse_service(good.spec())], {},
                                             pwd.getpwnam(NOBODY).pw_uid)
            run_as_nobody(as_nobody, ["-s", good.spec()], syslog)
            run_as_nobody(as_nobody, ["-s", good.spec()], syslog)
    finally:
        syslog.close()
    try:
        st = os.lstat(default)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == pwd.getpwnam(NOBODY).pw_uid
        directory = os.lstat(os.path.dirname(default))
        assert directory.st_uid == st.st_uid and stat.S_IMODE(directory.st_mode) == 0o700
        assert not any("state file" in line for line in syslog.lines), syslog.lines
    finally:
        os.unlink(default)
