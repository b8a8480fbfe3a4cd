"""The monitor: the one process that talks to the network for the master, as --user.

The master stays root (a reload binds new listen addresses and may read a root-only config
file; it removes its pidfile and unix sockets at exit), so what talks to the network is not
done in it: the active checks of every table in use (checks.py, including the tables kept for
workers that retire after a reload), the control socket (control.py, and its `ask`, which
sends a request through a pool from the monitor's loop: monitor/ask.py) and what else `serve`
lists: the Prometheus metrics (metrics.py) too. The master binds those listening sockets
itself (`Served`: the control socket's file is the master's, with its modes; a privileged port
works) and keeps them open; it forks the monitor after binding, as it forks a worker
(`Supervisor.spawn`: the same shedding of the master's state and the same privilege drop), and
the monitor serves them in its own event loop.

The tables are the master's mmaps, made before the fork: the checks and the control commands
of the monitor act on the memory every worker reads, and the worker table gives `workers` the
pids and generations of the workers (the master writes them when it forks and reaps), so no
request ever goes from the monitor to the master. The master does everything else (summary
line, sd_notify, signals) from the same tables.

`MonitorKeeper` is the master's side. The monitor runs whenever there is something for it to
serve (checks on, a control socket): one code path with or without --user. It is supervised
as every child (supervision.py): it says READY over its socketpair once it serves (end of file
there tells it the master is gone: it exits), a death before READY is a boot failure
(throttle.py: the monitor's own streak), any other death is replaced at once, and its heartbeat
in the worker table's last slot is watched by the same watchdog. A reload replaces it (the new
one has the new configuration and tables) and the end of the master stops it: killed and
waited for, so that no command of an old monitor writes in a table while the master carries it
over, and while none runs a control connection waits in the listen backlog. While it is down, a
service that live requests took down stays down until the next monitor's checks bring it back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.daemon import childproto
from hapolicy.daemon.childproto import MONITOR_TITLE, MSG_READY, set_title
from hapolicy.daemon.children import MONITOR
from hapolicy.daemon.monitorsockets import ControlSocket
from hapolicy.monitor.ask import Asker
from hapolicy.monitor.commands import answer
from hapolicy.monitor.control import ControlServer
from hapolicy.monitor.metrics import MetricsServer, Tables

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig
    from hapolicy.daemon.supervision import Supervisor
    from hapolicy.monitor.checks import CheckerSet
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.workertable import WorkerTable

HOUSEKEEPING_SECONDS = 1.0


class Served:
    """The listening sockets the master made for the monitor: --control's and
    --metrics-listen's. The master keeps them open from start to exit."""

    def __init__(self, control: ControlSocket | None = None,
                 metrics: socket.socket | None = None) -> None:
        self.control = control
        self.metrics = metrics

    @property
    def any(self) -> bool:
        return self.control is not None or self.metrics is not None

    def close_copies(self) -> None:
        """In a worker: it serves none of them."""
        if self.control is not None:
            self.control.close(remove=False)
        if self.metrics is not None:
            self.metrics.close()

    def hand_over(self) -> None:
        """In the old master of an upgrade once the new one serves: close them, remove
        nothing (the new master has them)."""
        if self.control is not None:
            self.control.close(remove=False)
        if self.metrics is not None:
            self.metrics.close()
        self.control = self.metrics = None

    def close(self, log: Logger) -> None:
        """In the master at exit: close them, remove the control socket's file."""
        if self.control is not None:
            self.control.close(log)
        if self.metrics is not None:
            self.metrics.close()


def serve(loop: EventLoop, monitor: Monitor) -> None:
    """Everything the monitor serves, started in its loop: the one place to add one more."""
    monitor.checks.start(loop, monitor.log)
    if monitor.served.control is not None:
        control = monitor.served.control
        asker = Asker(loop, monitor.config, monitor.health_tables, monitor.log)
        ControlServer(loop, control.sock, control.owner, control.gid, monitor.command, monitor.log,
                      asker.answer)
    if monitor.served.metrics is not None:
        MetricsServer(monitor.served.metrics, loop, monitor.tables, monitor.log)


class Monitor:
    """The monitor process: made by the master just before the fork, run in the child."""

    def __init__(self, config: DaemonConfig, health_tables: dict[str, HealthTable],
                 checks: CheckerSet, worker_table: WorkerTable, served: Served,
                 log: Logger) -> None:
        self.config = config
        self.health_tables = health_tables  # by pool name: the current tables
        self.checks = checks  # the master's plan: current and kept tables
        self.worker_table = worker_table
        self.served = served
        self.log = log
        self.loop: EventLoop | None = None
        self.done = False

    def command(self, line: str) -> str:
        """The answer of one control command, from the shared tables."""
        kept = [(entry.config, entry.table) for _, entry in self.checks.kept]
        return answer(line, self.config, self.health_tables, self.worker_table.workers(),
                      self.worker_table, self.log, kept)

    def tables(self) -> Tables:
        """What a scrape of /metrics reads: the shared tables and the live workers' slots."""
        return Tables(self.config, self.health_tables, self.worker_table,
                      list(self.worker_table.workers().values()))

    def run(self, master_sock: socket.socket) -> None:
        """The child's life, after the privilege drop; never returns."""
        set_title(MONITOR_TITLE)
        status = 0
        try:
            self._run(master_sock)
        except BaseException as exc:  # noqa: BLE001 - never a traceback
            with contextlib.suppress(BaseException):
                self.log.error(f"monitor internal error: {type(exc).__name__}: {exc}")
            status = 1
        os._exit(status)

    def _run(self, master_sock: socket.socket) -> None:
        self.loop = loop = EventLoop()
        # nothing to finish or save: TERM, INT and QUIT end it at once; a HUP is the master's
        childproto.obey({childproto.RETIRE: signal.SIG_IGN})
        serve(loop, self)
        master_sock.setblocking(False)
        loop.add(master_sock, EVENT_READ, lambda mask: self._on_master(master_sock))
        master_sock.send(MSG_READY)  # an error here is a failed start
        self._housekeeping()
        while not self.done:
            loop.run_once(HOUSEKEEPING_SECONDS)

    def _on_master(self, sock: socket.socket) -> None:
        if not childproto.master_gone(sock):
            return
        self.log.error("master is gone: monitor exits")
        self.done = True

    def _housekeeping(self) -> None:
        """The heartbeat; stop checking the kept tables whose workers are all gone."""
        self.worker_table.beat(self.worker_table.monitor_slot, time.monotonic())
        self.checks.stop_unused(self.worker_table.generations())
        self.loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)  # type: ignore[union-attr]


class MonitorKeeper:
    """The master's side: start the monitor when there is something to serve, stop it when
    there is not (or for a reload, at the end); supervised as every child (supervision.py).
    `make` gives the monitor of the running configuration and tables."""

    def __init__(self, supervisor: Supervisor, checks: CheckerSet, served: Served,
                 make: Callable[[], Monitor]) -> None:
        self.supervisor = supervisor
        self.checks = checks
        self.served = served
        self.make = make

    @property
    def pid(self) -> int:
        """The running monitor's, or 0."""
        child = self.supervisor.first(MONITOR)
        return child.pid if child is not None else 0

    def needed(self) -> bool:
        """Whether there is something for a monitor to serve."""
        return self.checks.checking or self.served.any

    def maintain(self, now: float) -> None:
        """Start one if it is needed and none runs (and the throttle allows); stop one that
        has nothing left to do (a reload turned the checks off, the old tables are gone)."""
        supervisor = self.supervisor
        if self.pid and not self.needed():
            self.stop()
        supervisor.proven(MONITOR, now)
        if self.pid or not self.needed() or not supervisor.may_start(MONITOR, now):
            return
        if supervisor.spawn(MONITOR, supervisor.worker_table.monitor_slot, self.make().run):
            supervisor.started(MONITOR, now)

    def stop(self) -> None:
        """Kill it and wait for its end (a reload's replacement, the master's exit): it has
        nothing to save, and no command of it may write in a table after this."""
        child = self.supervisor.first(MONITOR)
        if child is None:
            return
        self.supervisor.end(child)
        self.supervisor.throttles[MONITOR].reset()
