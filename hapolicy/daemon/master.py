"""The daemon's master: bind, prefork, reap, respawn, recycle, reload on HUP, drain on TERM.

Modelled on gunicorn's arbiter and Postfix's master. The master binds the listening sockets of
every pool (and the control socket) and makes the shared tables (a health table per pool)
before it forks; it stays root (its children drop privileges after fork: `fork_child`), so that
a reload can bind new addresses and read a root-only config, and it can remove its pidfile and
unix sockets at exit. It talks to no network itself: the checks and the control socket are
the monitor's (monitor.py), which it supervises as a worker. Signal handlers only queue the signal
and wake the loop through `signal.set_wakeup_fd`; the master forks with those signals blocked,
and the worker unblocks them once its own handlers are in place. Process operations and the
clock go through `ProcessOps` (children.py), a thin seam that the unit tests replace.

Each worker has a socketpair to the master (as Postfix's status pipe): it says READY once it
accepts and RETIRING at max-use (or after an internal error its loop contained); when the
master dies, the end of file tells it. A worker that
dies before READY died at boot, and such deaths are throttled, as are those of a worker that
exits by itself soon after its start (throttle.py). A READY worker whose heartbeat
in the worker table is older than WATCHDOG_SECONDS (its loop stuck: a hung look-up, a bug) is
killed and replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Callable

from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.log import Logger
from hapolicy.config.records import Config
from hapolicy.daemon.adminstate import AdminFile
from hapolicy.daemon.children import ProcessOps, WorkerProcess, fork_child
from hapolicy.daemon.chores import drop_privileges, preload_lazy_modules, read_pid, unlink
from hapolicy.daemon.listener import Listeners
from hapolicy.daemon.monitor import MonitorKeeper, Served
from hapolicy.daemon.notify import Notifier, ServiceNotes
from hapolicy.daemon.reload import Reloading, describe_pools
from hapolicy.daemon.summary import Summary
from hapolicy.daemon.throttle import BootThrottle, exit_code
from hapolicy.daemon.childproto import (
    MASTER_TITLE,
    MSG_READY,
    MSG_RETIRING,
    MSG_RETIRING_FAULT,
    SIGNALS,
    set_title,
)
from hapolicy.daemon.worker import Worker
from hapolicy.monitor.checks import CheckerSet
from hapolicy.monitor.metrics import preload as preload_metrics
from hapolicy.tables.health import HealthTable
from hapolicy.tables.workertable import WATCHDOG_SECONDS, WorkerTable

TABLE_SLOTS = 128  # at least; room for the retiring workers of a reload beside the new ones
KILL_GRACE = 5.0
MASTER_SIGNALS = SIGNALS


class Master(Reloading):
    """Keeps `workers` accepting workers of the current configuration alive."""

    def __init__(self, config: Config, log: Logger, reload_config: Callable[[], Config] | None = None,
                 ops: ProcessOps | None = None) -> None:
        self.config = config
        self.log = log
        self.reload_config = reload_config
        self.ops = ops or ProcessOps()
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 0
        self.signals: list[int] = []
        self.stopping = ""  # "", "graceful" or "now"
        self.stop_deadline = 0.0
        self.throttle = BootThrottle()
        self.listeners = Listeners()
        self.fd_limit = 0  # RLIMIT_NOFILE in force, logged at start
        self.pid = os.getpid()
        try:
            self.start_dir = os.getcwd()  # a relative -c FILE is read from here on HUP
        except OSError:
            self.start_dir = "/"
        self.checks = CheckerSet()
        self.admin_file: AdminFile | None = None  # the daemon's --state-file
        self.served = Served()
        self.monitor = MonitorKeeper(self)
        self.notes = ServiceNotes(Notifier("", 0, None))  # systemd's, from start()
        self.summary = Summary(config.summary_interval, self.ops.now())

    # setup
    def start(self) -> None:
        """After bind (and daemonize): title, tables, signals; the workers come from run()."""
        self.pid = os.getpid()
        set_title(MASTER_TITLE)
        preload_lazy_modules()
        if self.served.metrics is not None:
            preload_metrics()
        self.setup()
        self.notes = ServiceNotes(Notifier.from_environ(self.log))
        self.notes.start(self)
        signal.set_wakeup_fd(self.wake_w)
        for sig in MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.log.notice(f"master started: listening on {', '.join(self.config.addresses)}, "
                        f"{self.config.workers} workers, {describe_pools(self.config)}, "
                        f"{self.fd_limit} file descriptors per process")

    def setup(self) -> None:
        """The shared tables, the event loop and its wake-up pipe, what the monitor serves."""
        self.table = WorkerTable(max(TABLE_SLOTS, 3 * self.config.workers))
        self.health = {p.name: HealthTable(len(p.services), workers=self.table.slots)
                       for p in self.config.pools}
        if self.config.state_file not in ("", "none"):
            self.admin_file = AdminFile(self.config.state_file, self.log)
            self.admin_file.restore(self.config, self.health)
        self.loop = EventLoop()
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.loop.add(self.wake_r, EVENT_READ, self._drain_wake)
        for pool in self.config.pools:
            self.checks.replace(pool, self.health[pool.name], None, time.monotonic())

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _drain_wake(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # the loop
    def run(self) -> int:
        while self.step():
            self.loop.run_once(self.wait_time())
        self.log.notice("master stopped")
        return 0

    def step(self) -> bool:
        """Act on signals, dead workers and missing ones; False when it is time to exit."""
        self.handle_signals()
        self.reap()
        if self.stopping:
            if not self.workers:
                self.monitor.stop()  # it checked for the draining workers until now
                return False
            self.monitor.maintain(self.ops.now())  # one that died while they drain
            if self.ops.now() >= self.stop_deadline:
                self.log.warning(f"{len(self.workers)} workers still alive: killing them")
                self.kill_all(signal.SIGKILL)
                self.stop_deadline = self.ops.now() + KILL_GRACE
        else:
            self.watchdog()
            self.maintain()
            self.notes.update(self)
            if self.admin_file is not None:
                self.admin_file.save_if_changed(self.config, self.health)
            self.summary.tick(self.config, self.health, self.log, self.ops.now(),
                              time.monotonic())
        return True

    def wait_time(self) -> float:
        wait = 1.0
        if not self.stopping:
            until = min(self.throttle.next_start, self.monitor.throttle.next_start) - self.ops.now()
            if until > 0:
                wait = min(wait, until + 0.01)
            wait = min(wait, self.summary.wait(self.ops.now()) + 0.001)
        return wait

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP:
                if self.reload_config is not None and not self.stopping:
                    self.notes.reloading()
                self.reload()
            elif sig == signal.SIGTERM:
                self.stop("graceful")
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop("now")

    def stop(self, how: str) -> None:
        if self.stopping == "now" or self.stopping == how:
            return
        self.log.notice("stopping: " + ("draining in-flight requests" if how == "graceful"
                                        else "at once"))
        self.stopping = how
        self.notes.stopping()
        if how == "now":  # a draining worker still needs the checks to bring services back
            self.monitor.stop()
        self.listeners.close()
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        self.kill_all(sig)
        grace = self.config.drain_timeout + KILL_GRACE if how == "graceful" else KILL_GRACE
        self.stop_deadline = self.ops.now() + grace

    def kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            self._kill(pid, sig)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            self.ops.kill(pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        while True:
            pid, status = self.ops.reap()
            if not pid:
                return
            if self.monitor.reaped(pid, status, self.ops.now()):
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._read_messages(worker)  # a max-use retirement said just before the exit
            self._forget(worker)
            self.checks.stop_unused(self._generations())
            code = exit_code(status)
            if self.stopping or worker.retiring:
                if code:
                    self.log.warning(f"worker {pid} exited with status {code}")
                elif worker.retiring:
                    self.log.info(f"worker {pid} retired")
                continue
            self.throttle.judge_death("worker", pid, code, worker.ready, worker.started,
                                      self.ops.now(), self.log)

    def _generations(self) -> set[int]:
        return {w.generation for w in self.workers.values()}

    def _forget(self, worker: WorkerProcess) -> None:
        self.loop.remove(worker.sock)
        worker.sock.close()
        self.table.clear(worker.slot)

    def watchdog(self) -> None:
        """Kill a worker (or the monitor) whose loop is stuck; reap() replaces it."""
        now = self.ops.now()
        self.monitor.watchdog(now)
        for worker in self.workers.values():
            beat = self.table.last_beat(worker.slot)
            if worker.ready and beat and now - beat > WATCHDOG_SECONDS:
                self.log.error(f"worker {worker.pid} has not turned its loop for "
                               f"{now - beat:.0f}s: killing it")
                self._kill(worker.pid, signal.SIGKILL)
                self.table.beat(worker.slot, 0.0)  # once

    def maintain(self) -> None:
        now = self.ops.now()
        self.monitor.maintain(now)
        active = [w for w in self.workers.values() if not w.retiring]
        if self.throttle.failures:
            serving = [w.started for w in active if w.ready and w.generation == self.generation]
            if serving and self.throttle.ready(serving, now):
                self.log.notice("workers start again")
        missing = self.config.workers - len(active)
        while missing > 0 and self.throttle.may_start(now):
            if not self.spawn():
                break
            missing -= 1
            if self.throttle.started(now):
                break

    def spawn(self) -> bool:
        listeners = self.listeners.sockets()
        if not listeners:
            return False
        used = {w.slot for w in self.workers.values()}
        slot = next((s for s in range(self.table.slots) if s not in used), -1)
        if slot < 0:
            self.log.error(f"{self.table.slots} workers alive: not starting another yet")
            self.throttle.defer(self.ops.now() + 1.0)
            return False
        worker = Worker(self.config, listeners, self.health, self.table, slot, self.log)
        self.table.clear(slot)
        self.table.set_accepting(slot, False)
        for health in self.health.values():  # not a dead worker's requests in flight
            health.set_in_flight(slot, 0)
        forked = self.fork_child("worker", worker.run)
        if forked is None:
            self.throttle.defer(self.ops.now() + 1.0)
            return False
        pid, ours = forked
        self.table.set_worker(slot, pid, self.generation)
        record = WorkerProcess(pid, slot, self.generation, ours, self.ops.now())
        self.workers[pid] = record
        self.loop.add(ours, EVENT_READ, lambda mask, w=record: self._on_worker_message(w))
        return True

    def fork_child(self, what: str, run: Callable[[socket.socket], None]
                   ) -> tuple[int, socket.socket] | None:
        """A worker or the monitor (children.fork_child): (pid, the master's end), or None."""
        return fork_child(self.ops, what, run, lambda ours: self._shed(what, ours), self.log)

    def _shed(self, what: str, ours: socket.socket) -> None:
        """In a new child: close what is the master's, drop privileges.

        Every copy of a master's end of a socketpair must go, or a child would not see the
        end of file when the master dies. A worker keeps the listen sockets and nothing of
        what the monitor serves; the monitor, the other way round."""
        signal.set_wakeup_fd(-1)
        ours.close()
        for other in self.workers.values():
            other.sock.close()
        if self.monitor.sock is not None:
            self.monitor.sock.close()
        self.loop.close_inherited()  # the wake-up pipe, the socketpairs
        with contextlib.suppress(OSError):
            os.close(self.wake_w)
        if what == "worker":
            self.served.close_copies()
        else:
            for sock in self.listeners.sockets().values():
                sock.close()
        drop_privileges(self.config.user, self.config.group)

    def _on_worker_message(self, worker: WorkerProcess) -> None:
        if self._read_messages(worker) and not self.stopping:
            self.maintain()  # its replacement, at once

    def _read_messages(self, worker: WorkerProcess) -> bool:
        """Read what a worker said; True when it said it retires."""
        try:
            data = worker.sock.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.loop.remove(worker.sock)  # the worker is exiting; reap() finishes it
            return False
        return self.on_message(worker, data)

    def on_message(self, worker: WorkerProcess, data: bytes) -> bool:
        """Act on READY and RETIRING (or RETIRING_FAULT); True when the worker retires (a
        replacement is due)."""
        if MSG_READY in data:
            worker.ready = True
        fault = MSG_RETIRING_FAULT in data
        if (fault or MSG_RETIRING in data) and not worker.retiring:
            worker.retiring = True
            self.table.set_accepting(worker.slot, False)
            if fault:
                self.log.warning(f"worker {worker.pid} retiring after an internal error: a new "
                                 "one takes its place")
            else:
                self.log.info(f"worker {worker.pid} reached max-use {self.config.max_use}: "
                              "retiring")
            return True
        return False

    def cleanup(self) -> None:
        self.monitor.stop()  # first: no command changes the admin state after its last save
        if self.admin_file is not None and hasattr(self, "health"):
            self.admin_file.save_if_changed(self.config, self.health)
        self.served.close(self.log)
        self.listeners.cleanup(self.log)
        if self.config.pidfile and read_pid(self.config.pidfile) == self.pid:
            unlink(self.config.pidfile, self.log)
