"""The master's reload on SIGHUP: read the new configuration, bind the new listen addresses,
stop the monitor, retire the old workers, close the addresses gone, carry each pool's health
table over; the next `maintain` starts the new workers and a new monitor.

`Reloading` is a part of `Master` (master.py), in a module of its own for its size: what a
reload keeps (a pidfile, daemonizing: they need a restart), what it changes, and in what order,
so that no worker of the new configuration starts before its listeners are bound, and no
command of the old monitor writes in a table after it was carried over.
"""

from __future__ import annotations

import signal
import time

from hapolicy.base import frozen
from hapolicy.base.log import Logger
from hapolicy.config.records import Config
from hapolicy.daemon.chores import check_may_switch_user, resolve_ids, working_dir
from hapolicy.daemon.listener import ListenError
from hapolicy.tables.health import HealthTable, carry_over


def describe_pools(config: Config) -> str:
    """`2 services` for one pool, `pools grey (2 services), rate (1 services)` for several."""
    def count(pool: Config) -> str:
        return f"{len(pool.services)} services"

    if not config.pool_configs:
        return count(config)
    return "pools " + ", ".join(f"{p.name} ({count(p)})" for p in config.pools)


class Reloading:
    """The reload of a `Master` (whose attributes it uses)."""

    def read_new_config(self) -> Config | None:
        """The configuration a HUP asks for, with what needs a restart kept as it runs; None
        (logged) when it cannot be used."""
        try:
            with working_dir(self.start_dir):
                config = self.reload_config()
            resolve_ids(config.user, config.group)
            check_may_switch_user(config.user, config.group)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the running config stays
            self.log.error(f"reload failed, keeping the running configuration: {exc}")
            return None
        kept = {}
        for key in ("pidfile", "daemonize", "control", "control_group", "state_file",
                    "metrics_listen"):
            if getattr(config, key) != getattr(self.config, key):
                self.log.warning(f"reload: a new {key} needs a restart; keeping "
                                 f"{getattr(self.config, key)!r}")
                kept[key] = getattr(self.config, key)
        return frozen.replace(config, **kept) if kept else config

    def reload(self) -> None:
        if self.reload_config is None or self.stopping:
            return
        config = self.read_new_config()
        if config is None:
            return
        if (config.syslog_socket, config.log_stderr) != (self.config.syslog_socket,
                                                         self.config.log_stderr):
            self.log.close()
            self.log = Logger(config.syslog_socket, config.log_stderr)
        try:
            self.listeners.add_new(self.config, config, self.log)
        except ListenError as exc:
            self.log.error(f"reload failed, keeping the running configuration: {exc}")
            return
        self.monitor.stop()  # the next has the new configuration and tables
        self.generation += 1
        old = [w for w in self.workers.values() if not w.retiring]
        for worker in old:
            worker.retiring = True
            self.table.set_accepting(worker.slot, False)
            self._kill(worker.pid, signal.SIGHUP)
        self.listeners.remove_gone(config, self.log)
        self._new_tables(config)
        self.summary.reconfigure(config.summary_interval, self.ops.now())
        self.config = config
        self.checks.stop_unused(self._generations())  # no old worker left at all
        self.throttle.reset()
        self.log.notice(f"reloaded: {describe_pools(config)}, {config.workers} workers; "
                        f"{len(old)} old workers retire")
        self.maintain()

    def _new_tables(self, config: Config) -> None:
        """Each pool's table and checks for a reload: a pool that keeps its services keeps its
        table; one whose services changed gets a new one, where a service that keeps its name and
        address keeps its state. The retiring workers keep their old tables: the monitors keep
        checking those for them until they are gone."""
        before = {p.name: p for p in self.config.pools}
        health = {}
        for pool in config.pools:
            old = before.pop(pool.name, None)
            keep_for: int | None = None
            if old is not None and old.services == pool.services:
                health[pool.name] = self.health[pool.name]
            else:
                health[pool.name] = (HealthTable(len(pool.services), workers=self.table.slots)
                                     if old is None else
                                     carry_over(self.health[pool.name], old.services,
                                                pool.services))
                keep_for = self.generation - 1
            self.checks.replace(pool, health[pool.name], keep_for, time.monotonic())
        for name in before:  # pools gone
            self.checks.retire(name, self.generation - 1)
        self.health = health
