"""The master's steps of an upgrade in place (USR2), on both sides: `Succession` is a base of
Master (master.py), and these methods write its fields as the master's own.

The old master: `begin_upgrade` pauses what its monitor serves (the control socket, /metrics:
their connections wait in the backlog), then starts the program on disk (upgrade.py) with every
listening socket (`handed_sockets`) and the tables' state (tables/snapshot.py); `follow_upgrade`,
at each turn of its loop, hands over (`hand_over`) once the new master serves, or rolls back
when it failed (also after the new master said it serves but died before the hand-over: then
this one writes the pidfile and tells systemd again). The new master's monitor serves only the
checks until `take_over`, once one of its workers accepts: the pidfile, the word to the old
master (handover.py), and a monitor that serves the sockets. So a command is answered by the
master that stays, and acts on the tables that serve.
"""

from __future__ import annotations

from hapolicy.daemon.childproto import MASTER_TITLE, OLD_MASTER_TITLE, UPGRADING_TITLE, set_title
from hapolicy.daemon.chores import write_pidfile
from hapolicy.daemon.handover import CONTROL, LISTEN, METRICS
from hapolicy.daemon.upgrade import FAILING, SERVING, Upgrade, program
from hapolicy.tables import snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig
    from hapolicy.daemon.adminstate import AdminFile
    from hapolicy.daemon.children import ProcessOps
    from hapolicy.daemon.handover import Handover
    from hapolicy.daemon.listener import Listeners
    from hapolicy.daemon.monitor import MonitorKeeper, Served
    from hapolicy.daemon.notify import ServiceNotes
    from hapolicy.daemon.supervision import Supervisor
    from hapolicy.tables.health import HealthTable

KILL_GRACE = 5.0  # seconds after a deadline before the master kills what is left


def handed_sockets(listeners: Listeners, served: Served, metrics_address: str) -> list[dict]:
    """The handover's `sockets`: every listening socket the master holds."""
    entries = []
    for address, listener in listeners.by_address.items():
        if listener.sock is not None:
            entries.append({"fd": listener.sock.fileno(), "role": LISTEN, "address": address,
                            "systemd": listener.passed,
                            "identity": list(listener.identity) if listener.identity else None})
    used = {id(listener.sock) for listener in listeners.by_address.values()}
    for sock in listeners.passed:  # systemd's, for an address a reload dropped
        if id(sock) not in used:
            entries.append({"fd": sock.fileno(), "role": LISTEN, "address": "",
                            "systemd": True, "identity": None})
    if served.control is not None:
        control = served.control
        entries.append({"fd": control.sock.fileno(), "role": CONTROL, "address": control.path,
                        "identity": list(control.identity) if control.identity else None})
    if served.metrics is not None:
        entries.append({"fd": served.metrics.fileno(), "role": METRICS,
                        "address": metrics_address})
    return entries


class Succession:
    """The upgrade steps of Master: see the module's docstring."""

    config: DaemonConfig
    log: Logger
    ops: ProcessOps
    pid: int
    start_dir: str
    stopping: str
    stop_deadline: float
    loop: EventLoop
    listeners: Listeners
    served: Served
    supervisor: Supervisor
    monitor: MonitorKeeper
    notes: ServiceNotes
    admin_file: AdminFile | None
    health_tables: dict[str, HealthTable]
    handover: Handover | None
    upgrade: Upgrade | None

    def begin_upgrade(self) -> None:
        """A USR2: start the program on disk with the sockets and the tables' state."""
        busy = ("this old master retires" if self.stopping == "handed over" else
                "the master stops" if self.stopping else
                f"an upgrade is under way (new master {self.upgrade.pid})" if self.upgrade else
                "this master is still starting" if self.handover is not None else "")
        if busy:
            self.log.warning(f"upgrade ignored: {busy}")
            return
        self.monitor.stop()  # first: no command changes a table after its snapshot
        sockets = handed_sockets(self.listeners, self.served, self.config.metrics_listen)
        document = {"from": self.pid, "sockets": sockets,
                    "tables": snapshot.take(self.config.pools, self.health_tables)}
        try:
            self.upgrade = Upgrade.start(document, [s["fd"] for s in sockets], self.start_dir,
                                         self.loop, self.ops.now())
        except OSError as exc:
            self.log.error("upgrade failed, the running master keeps serving: cannot run "
                           f"{program()[0]}: {exc.strerror or exc}")
            return  # the next monitor serves the sockets again
        self.supervisor.watch(self.upgrade.pid, self.upgrade.exited)
        set_title(UPGRADING_TITLE)
        self.notes.reloading()
        self.log.notice(f"upgrade: started the new program as pid {self.upgrade.pid} "
                        f"({len(sockets)} sockets passed)")

    def follow_upgrade(self) -> None:
        """Hand over once the new master serves; roll back when it failed."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        upgrade.check(self.ops.now())
        if upgrade.outcome == SERVING:
            self.hand_over()
        elif upgrade.outcome == FAILING:
            upgrade.close()
            self.upgrade = None
            set_title(MASTER_TITLE)
            if upgrade.announced:  # it died after it wrote the pidfile and told systemd
                self._announce()
            self.notes.resumed()
            self.monitor.stop()  # the next serves the control and metrics sockets again
            self.log.error(f"upgrade failed, the running master keeps serving: {upgrade.why}")

    def _announce(self) -> None:
        """Say again that this master is the one: the pidfile, systemd's MAINPID."""
        if self.config.pidfile:
            try:
                write_pidfile(self.config.pidfile)
            except OSError as exc:
                self.log.error(f"cannot write pidfile {self.config.pidfile}: {exc.strerror}")
        self.notes.take_main(self.pid)

    def hand_over(self) -> None:
        """The new master serves: retire the workers, let the sockets go, then exit."""
        assert self.upgrade is not None
        pid = self.upgrade.pid
        self.upgrade.handed()
        self.upgrade = None
        retiring = self.supervisor.new_generation()
        self.listeners.hand_over()
        self.served.hand_over()
        self.admin_file = None  # the new master's now
        self.notes.silence()
        self.monitor.stop()  # the next, while the workers retire, only checks
        longest = max(pool.total_timeout for pool in self.config.pools)
        self.stopping = "handed over"
        self.stop_deadline = (self.ops.now() + self.config.retire_timeout + longest
                              + KILL_GRACE)
        set_title(OLD_MASTER_TITLE)
        self.log.notice(f"upgrade: new master {pid} serves; {retiring} old workers retire")

    def take_over(self) -> None:
        """The new master of an upgrade: a worker accepts; the pidfile, then the old master."""
        assert self.handover is not None
        if self.config.pidfile:
            try:
                write_pidfile(self.config.pidfile)
            except OSError as exc:
                self.log.error(f"cannot write pidfile {self.config.pidfile}: {exc.strerror}")
        self.handover.ready()
        self.log.notice(f"upgrade: serving in place of master {self.handover.from_pid}")
        self.handover = None
        set_title(MASTER_TITLE)
        self.monitor.stop()  # the next serves the control and metrics sockets
