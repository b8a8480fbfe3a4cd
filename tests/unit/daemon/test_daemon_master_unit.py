"""The master's logic with a fake ProcessOps (fork, kill, reap and the clock): workers that
die at boot are throttled, killed ones are replaced at once, reload failures keep the config;
the monitor is supervised as a worker, replaced on reload, stopped last.

No process is forked: the fake fork returns made-up pids, the fake reap reports the deaths a
test scripts, and the clock only moves when the test moves it.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
from testkit.logs import ListLogger

from hapolicy.config.file import assemble
from hapolicy.config.records import DaemonConfig, Service
from hapolicy.config.values import ConfigError
from hapolicy.daemon.childproto import MSG_READY
from hapolicy.daemon.children import MONITOR, WORKER, Child, ProcessOps
from hapolicy.daemon.listener import Listener
from hapolicy.daemon.master import Master
from hapolicy.daemon.throttle import STABLE_SECONDS, THROTTLE_MAX, BootThrottle
from hapolicy.tables.workertable import WATCHDOG_SECONDS

EXIT_3 = 3 << 8  # a wait status: exited with status 3 (a worker that cannot start)
KILLED = signal.SIGKILL  # a wait status: killed by SIGKILL


class FakeOps(ProcessOps):
    def __init__(self) -> None:
        self.t = 1000.0
        self.next_pid = 100
        self.forks: list[tuple[float, int]] = []
        self.kills: list[tuple[int, int]] = []
        self.deaths: list[tuple[int, int]] = []
        self.waited: list[int] = []

    def now(self) -> float:
        return self.t

    def fork(self) -> int:
        pid = self.next_pid
        self.next_pid += 1
        self.forks.append((self.t, pid))
        return pid

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))

    def reap(self) -> tuple[int, int]:
        return self.deaths.pop(0) if self.deaths else (0, 0)

    def wait(self, pid: int) -> None:
        self.waited.append(pid)


def daemon_config(service: Service, **settings) -> DaemonConfig:
    """The configuration of one pool of one service, the settings of either scope."""
    return assemble(None, settings, [service])


def make_master(**settings) -> Master:
    config = daemon_config(Service("A", "127.0.0.1", 9), listen="127.0.0.1:1", workers=2,
                           **settings)
    m = Master(config, ListLogger(), ops=FakeOps())
    listener = Listener("127.0.0.1:1")
    listener.sock = socket.socket()
    m.listeners.by_address["127.0.0.1:1"] = listener
    m.setup()
    return m


def close_master(m: Master) -> None:
    m.listeners.close()
    for child in list(m.supervisor.children.values()):
        m.supervisor.forget(child)
    os.close(m.wake_r)
    os.close(m.wake_w)
    m.loop.close()


@pytest.fixture
def master():
    """Without checks nor control socket: no monitor, only workers are forked."""
    m = make_master(check_interval=0.0)
    yield m
    close_master(m)


@pytest.fixture
def checked():
    """With checks (the default): the first fork is the monitor's (pid 100)."""
    m = make_master()
    yield m
    close_master(m)


def alive(m: Master) -> list[int]:
    return sorted(m.workers)


def throttle(m: Master, kind: str = WORKER) -> BootThrottle:
    return m.supervisor.throttles[kind]


def says_ready(m: Master, child: Child | None) -> None:
    """The child said READY over its socketpair."""
    assert child is not None
    m.supervisor.heard(child, MSG_READY)


def test_first_workers_start_at_once(master):
    master.step()
    assert alive(master) == [100, 101]
    assert len(master.ops.forks) == 2


def test_workers_dying_at_boot_are_throttled(master):
    ops = master.ops
    master.step()
    start = ops.t
    # every worker dies 0.1 s after it was forked, for two simulated minutes
    while ops.t < start + 120:
        ops.t += 0.1
        ops.deaths = [(pid, EXIT_3) for pid in list(master.workers)
                      if ops.t - master.workers[pid].started >= 0.1]
        master.step()
    times = [t for t, _ in ops.forks]
    gaps = [b - a for a, b in zip(times[2:], times[3:])]
    # a tight loop would have forked about 1200 times; the pauses double up to the cap
    assert len(ops.forks) <= 12, times
    assert gaps == sorted(gaps), gaps
    assert THROTTLE_MAX <= max(gaps) <= THROTTLE_MAX + 0.5  # pause + life + a step
    assert any("died at boot" in line and "next start in 30s" in line
               for line in master.log.lines)
    # then a worker survives its boot (it says READY): the next one starts at once
    ops.t = max(ops.t, throttle(master).next_start) + 0.01
    master.step()
    assert len(master.workers) == 1
    says_ready(master, next(iter(master.workers.values())))
    master.step()
    assert len(master.workers) == 2
    # the streak ends once that worker has run STABLE_SECONDS
    assert throttle(master).failures > 0
    ops.t += STABLE_SECONDS
    master.step()
    assert throttle(master).failures == 0
    assert "notice: workers start again" in master.log.lines


def test_workers_dying_soon_after_ready_are_throttled(master):
    """A worker that says READY and then exits by itself within STABLE_SECONDS, over and over
    (a request that crashes every worker), is throttled as one that dies at boot."""
    ops = master.ops
    master.step()
    start = ops.t
    while ops.t < start + 120:
        ops.t += 0.1
        for worker in master.workers.values():
            if ops.t - worker.started >= 0.1:
                says_ready(master, worker)
        ops.deaths = [(pid, 1 << 8) for pid, w in master.workers.items()
                      if ops.t - w.started >= 2.0]
        master.step()
    assert len(ops.forks) <= 16, [t for t, _ in ops.forks]
    assert any("died 2.0s after its start (status 1)" in line and "next start in 30s" in line
               for line in master.log.lines), master.log.lines[-5:]


def test_killed_worker_replaced_at_once_even_young(master):
    ops = master.ops
    master.step()
    ops.t += 0.2  # not READY yet, but killed from outside: not a boot failure
    ops.deaths = [(100, KILLED)]
    master.step()
    assert alive(master) == [101, 102]
    assert throttle(master).failures == 0
    assert any("worker 100 exited with status -9" in line for line in master.log.lines)


def test_crash_at_boot_counts_as_boot_failure(master):
    ops = master.ops
    master.step()
    ops.t += 0.2
    ops.deaths = [(100, signal.SIGSEGV)]
    master.step()
    assert alive(master) == [101]  # not replaced before the pause
    ops.t += 1.01
    master.step()
    assert alive(master) == [101, 102]


def test_retired_worker_not_replaced_twice(master):
    ops = master.ops
    master.step()
    master.workers[100].retiring = True  # as on its max-use message
    master.step()
    assert alive(master) == [100, 101, 102]
    ops.t += 5
    ops.deaths = [(100, 0)]
    master.step()
    assert alive(master) == [101, 102]


def test_failed_reload_keeps_everything(master):
    def broken() -> DaemonConfig:
        raise ConfigError("/etc/hapolicy.conf:3: unknown setting 'bogus'")

    master.reload_config = broken
    master.step()
    master.signals.append(signal.SIGHUP)
    master.step()
    assert alive(master) == [100, 101]
    assert not any(w.retiring for w in master.workers.values())
    assert master.ops.kills == []
    assert any("reload failed, keeping the running configuration: /etc/hapolicy.conf:3"
               in line for line in master.log.lines)


def test_reload_retires_old_workers_and_starts_new(master):
    new = daemon_config(Service("B", "127.0.0.1", 9), listen="127.0.0.1:1", workers=3,
                        pidfile="/elsewhere.pid", check_interval=0.0)
    master.reload_config = lambda: new
    master.step()
    master.signals.append(signal.SIGHUP)
    master.step()
    assert sorted(master.ops.kills) == [(100, signal.SIGHUP), (101, signal.SIGHUP)]
    assert alive(master) == [100, 101, 102, 103, 104]
    assert master.config.pools[0].services == new.pools[0].services
    assert master.config.pidfile == ""  # a new pidfile needs a restart


def test_retiring_workers_keep_the_checks_of_their_table_until_they_are_gone(checked):
    master = checked
    old_table = master.health_tables["default"]
    master.reload_config = lambda: daemon_config(Service("B", "127.0.0.1", 9),
                                                 listen="127.0.0.1:1", workers=2)
    master.step()
    assert master.monitor.pid == 100 and alive(master) == [101, 102]
    assert master.worker_table.workers() == {101: 0, 102: 1}
    master.signals.append(signal.SIGHUP)
    master.step()
    assert (100, signal.SIGKILL) in master.ops.kills and master.ops.waited == [100]
    assert master.monitor.pid == 103  # the new one, with the new tables and the old one kept
    assert master.health_tables["default"] is not old_table
    assert master.health_tables["default"].checked
    assert old_table.checked  # workers 101 and 102 still serve on it: no live probes there
    assert [entry.table for entry in master.checks.all()] == [master.health_tables["default"],
                                                               old_table]
    assert master.worker_table.generations() == {0, 1}
    master.ops.deaths = [(101, 0)]
    master.step()
    assert len(master.checks.kept) == 1
    master.ops.deaths = [(102, 0)]
    master.step()
    assert master.checks.kept == [] and master.worker_table.generations() == {1}
    assert master.health_tables["default"].checked


def test_the_monitor_is_started_first_and_supervised_as_a_worker(checked):
    master, ops = checked, checked.ops
    master.step()
    assert master.monitor.pid == 100 and alive(master) == [101, 102]
    ops.t += 0.2
    ops.deaths = [(100, EXIT_3)]  # died before READY, by itself: a boot failure
    master.step()
    assert master.monitor.pid == 0
    assert any("monitor 100 died at boot (status 3)" in line for line in master.log.lines)
    ops.t += 1.01
    master.step()
    assert master.monitor.pid == 103
    # it says READY; the streak ends once it ran STABLE_SECONDS
    says_ready(master, master.supervisor.first(MONITOR))
    ops.t += STABLE_SECONDS
    master.step()
    assert throttle(master, MONITOR).failures == 0
    assert "notice: monitor starts again" in master.log.lines
    ops.deaths = [(103, KILLED)]  # killed from outside: replaced at once
    master.step()
    assert master.monitor.pid == 104 and alive(master) == [101, 102]


def test_the_watchdog_kills_a_stuck_monitor(checked):
    master, ops = checked, checked.ops
    master.step()
    says_ready(master, master.supervisor.first(MONITOR))
    master.worker_table.beat(master.worker_table.monitor_slot, ops.t)
    ops.t += WATCHDOG_SECONDS + 1
    master.step()
    master.step()
    assert ops.kills == [(100, signal.SIGKILL)]  # once
    assert any("monitor 100 has not turned its loop for 61s" in line
               for line in master.log.lines)


def test_the_monitor_checks_for_draining_workers_and_is_stopped_last(checked):
    master, ops = checked, checked.ops
    master.step()
    master.signals.append(signal.SIGTERM)
    assert master.step()
    assert sorted(ops.kills) == [(101, signal.SIGTERM), (102, signal.SIGTERM)]
    ops.deaths = [(101, 0), (102, 0)]
    assert not master.step()
    assert ops.kills[-1] == (100, signal.SIGKILL) and ops.waited == [100]
    assert master.monitor.pid == 0


def test_no_monitor_without_checks_or_control(master):
    master.step()
    assert master.monitor.pid == 0 and len(master.ops.forks) == 2


def test_a_reload_that_turns_the_checks_off_ends_the_monitor_with_the_old_tables(checked):
    master, ops = checked, checked.ops
    master.reload_config = lambda: daemon_config(Service("B", "127.0.0.1", 9),
                                                 listen="127.0.0.1:1", workers=2,
                                                 check_interval=0.0)
    master.step()
    master.signals.append(signal.SIGHUP)
    master.step()
    assert master.monitor.pid == 103  # it checks the old table for workers 101 and 102
    assert not master.health_tables["default"].checked
    ops.deaths = [(101, 0), (102, 0)]
    master.step()
    assert master.monitor.pid == 0 and ops.waited == [100, 103]


def test_term_drains_then_kills_stragglers(master):
    ops = master.ops
    master.step()
    master.signals.append(signal.SIGTERM)
    assert master.step()
    assert sorted(ops.kills) == [(100, signal.SIGTERM), (101, signal.SIGTERM)]
    ops.deaths = [(100, 0)]
    ops.t += 1
    assert master.step()  # 101 still draining
    ops.t += master.config.drain_timeout + 10
    assert master.step()
    assert (101, signal.SIGKILL) in ops.kills
    ops.deaths = [(101, KILLED)]
    assert not master.step()  # every worker gone: the master exits
    assert alive(master) == []


def test_a_ready_worker_that_dies_is_replaced_at_once(master):
    """Once it has run STABLE_SECONDS: sooner, see test_workers_dying_soon_after_ready_..."""
    ops = master.ops
    master.step()
    says_ready(master, master.workers[100])
    ops.t += STABLE_SECONDS
    ops.deaths = [(100, EXIT_3)]
    master.step()
    assert alive(master) == [101, 102]
    assert throttle(master).failures == 0


def test_the_watchdog_kills_a_worker_whose_loop_is_stuck(master):
    ops = master.ops
    master.step()
    for worker in master.workers.values():
        says_ready(master, worker)
        master.worker_table.beat(worker.slot, ops.t)
    ops.t += WATCHDOG_SECONDS - 1
    master.worker_table.beat(master.workers[101].slot, ops.t)  # 101 keeps turning its loop
    master.step()
    assert ops.kills == []
    ops.t += 2
    master.step()
    master.step()
    assert ops.kills == [(100, signal.SIGKILL)]  # once
    assert any("worker 100 has not turned its loop for 61s" in line for line in master.log.lines)
