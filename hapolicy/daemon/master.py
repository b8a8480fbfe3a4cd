"""The daemon's master: bind, prefork, reap, respawn, recycle, reload on HUP, drain on TERM.

Modelled on gunicorn's arbiter and Postfix's master. The master binds the listening sockets of
every pool (and the control socket) and makes the shared tables (a health table per pool)
before it forks; it stays root (its children drop privileges after fork: `_shed`), so that
a reload can bind new addresses and read a root-only config, and it can remove its pidfile and
unix sockets at exit. It talks to no network itself: the checks and the control socket are
the monitor's (monitor.py). Signal handlers only queue the signal and wake the loop through
`signal.set_wakeup_fd`; the master forks with those signals blocked, and a child unblocks them
once its own handlers are in place (childproto.py). Process operations and the clock go
through `ProcessOps` (children.py), a thin seam that the unit tests replace.

Every child, the workers and the monitor, is supervised one way (supervision.py: spawn, what
it says, reap, boot throttle, watchdog); the master decides what runs: `workers` workers of
the running configuration and, when there is something to serve, the monitor (MonitorKeeper).
A HUP's reload is a plan (reload.py) the master applies; TERM drains the workers, INT and QUIT
stop them at once, and the master exits once they are gone (the monitor last).

USR2 is an upgrade in place. The master starts the program on disk with its sockets and its
tables' state (upgrade.py, handover.py) and pauses what its monitor serves (control commands
and scrapes wait in the backlog for the new master's monitor: none changes a table the new
master has already copied). When the new master serves, this one hands over: its workers
retire as on a HUP, it closes its copies of the sockets and removes nothing, says nothing more
to systemd nor to the state file, and exits after its last worker; its monitor goes on with the
checks for them. When the new one fails, this one keeps serving as before (the rollback). The
new master (`handover`) takes the sockets and the state at start, and once one of its workers
accepts writes the pidfile and tells the old one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Callable

from hapolicy import __version__
from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.log import Logger
from hapolicy.config.records import DaemonConfig
from hapolicy.daemon import childproto
from hapolicy.daemon.adminstate import AdminFile
from hapolicy.daemon.childproto import MASTER_TITLE, NEW_MASTER_TITLE, set_title
from hapolicy.daemon.children import WORKER, Child, ProcessOps
from hapolicy.daemon.chores import drop_privileges, preload_lazy_modules, read_pid, unlink
from hapolicy.daemon.handover import Handover
from hapolicy.daemon.listener import ListenError, Listeners
from hapolicy.daemon.monitor import Monitor, MonitorKeeper, Served
from hapolicy.daemon.notify import Notifier, ServiceNotes
from hapolicy.daemon.reload import ReloadPlan, describe_pools, plan_reload
from hapolicy.daemon.succession import KILL_GRACE, Succession
from hapolicy.daemon.summary import Summary
from hapolicy.daemon.supervision import Supervisor
from hapolicy.daemon.upgrade import Upgrade
from hapolicy.daemon.worker import Worker
from hapolicy.monitor.checks import CheckerSet
from hapolicy.monitor.metrics import preload as preload_metrics
from hapolicy.tables import snapshot, verdicts
from hapolicy.tables.health import HealthTable
from hapolicy.tables.workertable import WorkerTable

TABLE_SLOTS = 128  # at least; room for the retiring workers of a reload beside the new ones
MASTER_SIGNALS = childproto.SIGNALS


class Master(Succession):
    """Keeps `workers` accepting workers of the current configuration alive, and the monitor
    while there is something for it to serve."""

    def __init__(self, config: DaemonConfig, log: Logger,
                 reload_config: Callable[[], DaemonConfig] | None = None,
                 ops: ProcessOps | None = None, handover: Handover | None = None) -> None:
        self.config = config
        self.log = log
        self.reload_config = reload_config
        self.ops = ops or ProcessOps()
        self.signals: list[int] = []
        self.stopping = ""  # "", "graceful", "now", or "handed over" (an upgrade's old master)
        self.stop_deadline = 0.0
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
        self.supervisor = Supervisor(self.ops, log, self._shed, self._replace_retired)
        self.monitor = MonitorKeeper(self.supervisor, self.checks, self.served, self._new_monitor)
        self.notes = ServiceNotes(Notifier("", 0, None))  # systemd's, from start()
        self.summary = Summary(config.summary_interval, self.ops.now())
        self.handover = handover  # what the old master passed, until this one serves
        self.upgrade: Upgrade | None = None  # the new master this one started, until decided

    @property
    def workers(self) -> dict[int, Child]:
        """The live workers by pid."""
        return {child.pid: child for child in self.supervisor.of(WORKER)}

    # setup
    def start(self) -> None:
        """After bind (and daemonize): title, tables, signals; the workers come from run()."""
        self.pid = os.getpid()
        set_title(MASTER_TITLE if self.handover is None else NEW_MASTER_TITLE)
        preload_lazy_modules()
        if self.served.metrics is not None:
            preload_metrics()
        self.setup()
        self.notes = ServiceNotes(Notifier.from_environ(self.log))
        if self.handover is not None:
            self.notes.take_main(self.pid)
        self.notes.start(self.loop)
        signal.set_wakeup_fd(self.wake_w)
        for sig in MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.log.notice(f"master started: hapolicy {__version__}, listening on "
                        f"{', '.join(self.config.addresses)}, {self.config.workers} workers, "
                        f"{describe_pools(self.config)}, {self.fd_limit} file descriptors per "
                        "process" + (f", upgrading master {self.handover.from_pid}"
                                     if self.handover is not None else ""))

    def setup(self) -> None:
        """The shared tables, the event loop and its wake-up pipe, what the monitor serves."""
        self.worker_table = WorkerTable(max(TABLE_SLOTS, 3 * self.config.workers))
        self.health_tables = {p.name: HealthTable(len(p.services), workers=self.worker_table.slots)
                       for p in self.config.pools}
        verdicts.attach(self.config.pools, self.health_tables)  # empty, also after an upgrade
        if self.config.state_file not in ("", "none"):
            self.admin_file = AdminFile(self.config.state_file, self.log)
            self.admin_file.restore(self.config, self.health_tables)
        if self.handover is not None:
            carried, skipped = snapshot.restore(self.handover.tables, self.config.pools,
                                                self.health_tables)
            self.log.notice(f"upgrade: the state of {carried} services carried over from "
                            f"master {self.handover.from_pid}"
                            + (f", {skipped} entries not understood" if skipped else ""))
        self.loop = EventLoop()
        self.supervisor.attach(self.loop, self.worker_table)
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.loop.add(self.wake_r, EVENT_READ, self._drain_wake)
        for pool in self.config.pools:
            self.checks.replace(pool, self.health_tables[pool.name], None, time.monotonic())

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
        """Act on signals, dead children and missing ones; False when it is time to exit."""
        self.handle_signals()
        if self.supervisor.reap(bool(self.stopping)):
            self._clear_free_slots()
            self.checks.stop_unused(self.supervisor.generations())
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
            self.supervisor.watchdog(self.ops.now())
            self.maintain()
            serving = len(self.supervisor.serving(WORKER))
            if serving and self.handover is not None:
                self.take_over()
            self.notes.update(serving, self.health_tables.values(), self.ops.now())
            self.follow_upgrade()
            if self.admin_file is not None:
                self.admin_file.save_if_changed(self.config, self.health_tables)
            self.summary.tick(self.config, self.health_tables, self.log, self.ops.now(),
                              time.monotonic())
        return True

    def wait_time(self) -> float:
        wait = 1.0
        if not self.stopping:
            until = self.supervisor.next_start() - self.ops.now()
            if until > 0:
                wait = min(wait, until + 0.01)
            wait = min(wait, self.summary.wait(self.ops.now()) + 0.001)
        if self.handover is not None:  # its first worker's READY comes on its socketpair
            wait = min(wait, 0.05)
        if self.upgrade is not None:  # the new master's time to settle
            wait = min(wait, 0.1)
        return wait

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP and self.upgrade is not None:
                self.log.warning("reload ignored: an upgrade is under way")
            elif sig == signal.SIGHUP:
                if self.reload_config is not None and not self.stopping:
                    self.notes.reloading()
                self.reload()
            elif sig == childproto.UPGRADE:
                self.begin_upgrade()
            elif sig == signal.SIGTERM:
                self.stop("graceful")
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop("now")

    def stop(self, how: str) -> None:
        if self.stopping == "now" or self.stopping == how:
            return
        self.log.notice("stopping: " + ("draining in-flight requests" if how == "graceful"
                                        else "at once"))
        if self.upgrade is not None:  # the new master has not served yet: it stops too
            self.supervisor.kill(self.upgrade.pid, signal.SIGTERM)
            self.upgrade.close()
            self.upgrade = None
            self.log.notice("upgrade abandoned: the new master stops too")
        self.stopping = how
        self.notes.stopping()
        if how == "now":  # a draining worker still needs the checks to bring services back
            self.monitor.stop()
        self.listeners.close()
        self.kill_all(childproto.DRAIN if how == "graceful" else childproto.STOP)
        grace = self.config.drain_timeout + KILL_GRACE if how == "graceful" else KILL_GRACE
        self.stop_deadline = self.ops.now() + grace

    def kill_all(self, sig: int) -> None:
        """Signal every worker (not the monitor: it is stopped last)."""
        self.supervisor.kill_all(WORKER, sig)

    # the workers
    def maintain(self) -> None:
        """Start the monitor and the missing workers, as the boot throttles allow."""
        now = self.ops.now()
        self.monitor.maintain(now)
        self.supervisor.proven(WORKER, now)
        missing = self.config.workers - len(self.supervisor.active(WORKER))
        while missing > 0 and self.supervisor.may_start(WORKER, now):
            if not self.spawn():
                break
            missing -= 1
            if self.supervisor.started(WORKER, now):
                break

    def spawn(self) -> bool:
        """Start one worker of the running configuration; False when none could start."""
        listeners = self.listeners.sockets()
        if not listeners:
            return False
        slot = self.supervisor.claim_slot()
        if slot < 0:
            return False
        worker = Worker(self.config, listeners, self.health_tables, self.worker_table, slot,
                        self.log)
        for health in self.health_tables.values():  # not a dead worker's requests in flight
            health.clear_slot(slot, used=True)
        return self.supervisor.spawn(WORKER, slot, worker.run, self.config.max_use) is not None

    def _clear_free_slots(self) -> None:
        """Forget what the workers that left said in the tables of every generation: a worker
        killed with requests in flight (stop, retire timeout) must not leave them counted
        against a service's max-inflight until another worker takes its slot."""
        used = {child.slot for child in self.workers.values()}
        free = [s for s in range(self.worker_table.slots) if s not in used]
        tables = {id(t): t for t in (*self.health_tables.values(),
                                     *(entry.table for entry in self.checks.all()))}
        for table in tables.values():
            for slot in free:
                table.clear_slot(slot)

    def _new_monitor(self) -> Monitor:
        """The monitor of the running configuration and tables (MonitorKeeper's `make`);
        while an upgrade is undecided (in either master), one that serves only the checks."""
        served = self.served if self.upgrade is None and self.handover is None else Served()
        return Monitor(self.config, self.health_tables, self.checks, self.worker_table,
                       served, self.log)

    def _replace_retired(self) -> None:
        """A worker said it retires (Supervisor's `replace`): its replacement, at once."""
        if not self.stopping:
            self.maintain()

    def _shed(self, kind: str) -> None:
        """In a new child, its siblings' sockets closed (Supervisor's `shed`): close the rest of
        what is the master's, drop privileges. A worker keeps the listen sockets and nothing of
        what the monitor serves; the monitor, the other way round."""
        signal.set_wakeup_fd(-1)
        self.loop.close_inherited()  # the wake-up pipe, the socketpairs
        with contextlib.suppress(OSError):
            os.close(self.wake_w)
        if self.handover is not None:
            self.handover.close_in_child()
        if kind == WORKER:
            self.served.close_copies()
        else:
            for sock in self.listeners.sockets().values():
                sock.close()
        drop_privileges(self.config.user, self.config.group)

    # the reload
    def reload(self) -> None:
        """A HUP: plan the reload (reload.py) and apply it."""
        if self.reload_config is None or self.stopping:
            return
        plan = plan_reload(self.reload_config, self.start_dir, self.config, self.log)
        if plan is not None:
            self.apply_reload(plan)

    def apply_reload(self, plan: ReloadPlan) -> None:
        """Carry a reload out, in the order reload.py gives."""
        log = plan.new_log()
        if log is not None:
            self.log.close()
            self._use_log(log)
        try:
            self.listeners.add_new(self.config, plan.config, self.log)
        except ListenError as exc:
            self.log.error(f"reload failed, keeping the running configuration: {exc}")
            return
        self.monitor.stop()  # the next has the new configuration and tables
        retiring = self.supervisor.new_generation()
        self.listeners.remove_gone(plan.config, self.log)
        self.health_tables = plan.carry_tables(self.health_tables, self.worker_table.slots,
                                        self.supervisor.generation - 1, self.checks,
                                        time.monotonic())
        self.summary.reconfigure(plan.config.summary_interval, self.ops.now())
        self.config = plan.config
        self.checks.stop_unused(self.supervisor.generations())  # no old worker left at all
        self.supervisor.throttles[WORKER].reset()
        self.log.notice(plan.notice(retiring))
        self.maintain()

    def _use_log(self, log: Logger) -> None:
        """A reload's new logger, for everything of the master's that logs."""
        self.log = log
        self.supervisor.log = log
        self.notes.notifier.log = log

    def cleanup(self) -> None:
        self.monitor.stop()  # first: no command changes the admin state after its last save
        if self.admin_file is not None and hasattr(self, "health_tables"):
            self.admin_file.save_if_changed(self.config, self.health_tables)
        if self.handover is not None:  # a new master that never served: the files stay
            self.served.hand_over()
            self.listeners.undo()
        else:
            self.served.close(self.log)
            self.listeners.cleanup(self.log)
        if self.config.pidfile and read_pid(self.config.pidfile) == self.pid:
            unlink(self.config.pidfile, self.log)
