"""The master's reload on SIGHUP, as a plan: `plan_reload` reads the new configuration from its
named inputs and keeps what needs a restart as it runs (a pidfile, daemonizing, the control
socket, the state file, the metrics address); `Master.apply_reload` carries the `ReloadPlan`
out, in this order:

1. a new logger when the log goes elsewhere (`ReloadPlan.new_log`);
2. the new listen addresses bound (a failure keeps the running configuration): no worker of
   the new configuration starts before its listeners are bound;
3. the monitor stopped: no command of the old one writes in a table after it was carried over;
4. a new generation: the old workers retire;
5. the addresses gone closed;
6. each pool's table carried over (`ReloadPlan.carry_tables`), with what is checked, and its
   verdict cache (tables/verdicts.py: kept while its services, cache-key, cache-actions and
   cache-size stay);
7. the new configuration in force, the checks of tables no worker uses any more stopped, the
   workers' boot throttle reset, one line (`ReloadPlan.notice`);
8. the next `maintain` starts the new workers and a new monitor.
"""

from __future__ import annotations

from hapolicy.base import frozen
from hapolicy.base.log import Logger
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.daemon.chores import check_may_switch_user, resolve_ids, working_dir
from hapolicy.tables import verdicts
from hapolicy.tables.health import HealthTable, carry_over

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Callable

    from hapolicy.monitor.checks import CheckerSet

NEED_RESTART = ("pidfile", "daemonize", "control", "control_group", "state_file",
                "metrics_listen")


def describe_pools(config: DaemonConfig) -> str:
    """`2 services` for one pool, `pools grey (2 services), rate (1 services)` for several."""
    def count(pool: PoolConfig) -> str:
        return f"{len(pool.services)} services"

    if not config.sections:
        return count(config.pools[0])
    return "pools " + ", ".join(f"{p.name} ({count(p)})" for p in config.pools)


def plan_reload(read: Callable[[], DaemonConfig], start_dir: str, running: DaemonConfig,
                log: Logger) -> ReloadPlan | None:
    """The reload a HUP asks for: the configuration `read` gives (run in start_dir, where a
    relative -c FILE is), with what needs a restart kept as `running` has it; None (logged)
    when it cannot be used."""
    try:
        with working_dir(start_dir):
            config = read()
        resolve_ids(config.user, config.group)
        check_may_switch_user(config.user, config.group)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong, the running config stays
        log.error(f"reload failed, keeping the running configuration: {exc}")
        return None
    kept = {}
    for key in NEED_RESTART:
        if getattr(config, key) != getattr(running, key):
            log.warning(f"reload: a new {key} needs a restart; keeping "
                        f"{getattr(running, key)!r}")
            kept[key] = getattr(running, key)
    return ReloadPlan(running, frozen.replace(config, **kept) if kept else config)


class ReloadPlan:
    """A reload decided: from the `running` configuration to `config`."""

    def __init__(self, running: DaemonConfig, config: DaemonConfig) -> None:
        self.running = running
        self.config = config

    def new_log(self) -> Logger | None:
        """A logger for the new configuration when the log goes elsewhere; None: the same."""
        new, old = self.config, self.running
        if (new.syslog_socket, new.log_stderr) == (old.syslog_socket, old.log_stderr):
            return None
        return Logger(new.syslog_socket, new.log_stderr)

    def carry_tables(self, health_tables: Mapping[str, HealthTable], slots: int,
                     retiring_generation: int, checks: CheckerSet, now: float
                     ) -> dict[str, HealthTable]:
        """Each pool's table, and its checks: a pool that keeps its services keeps its table;
        one whose services changed gets a new one, where a service that keeps its name and
        address keeps its state. The workers of `retiring_generation` keep their old tables:
        the monitors keep checking those for them until they are gone. health_tables: the
        running tables by pool; slots: the worker table's; now: monotonic."""
        before = {p.name: p for p in self.running.pools}
        tables = {}
        for pool in self.config.pools:
            old = before.pop(pool.name, None)
            keep_for: int | None = None
            if old is not None and old.services == pool.services:
                tables[pool.name] = health_tables[pool.name]
            else:
                tables[pool.name] = (HealthTable(len(pool.services), workers=slots)
                                     if old is None else
                                     carry_over(health_tables[pool.name], old.services, pool.services))
                keep_for = retiring_generation
            checks.replace(pool, tables[pool.name], keep_for, now)
        for name in before:  # pools gone
            checks.retire(name, retiring_generation)
        verdicts.carry(self.running.pools, self.config.pools, health_tables, tables)
        return tables

    def notice(self, retiring: int) -> str:
        """The line that says the reload is done."""
        return (f"reloaded: {describe_pools(self.config)}, {self.config.workers} workers; "
                f"{retiring} old workers retire")
