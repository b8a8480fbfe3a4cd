"""The control socket's commands (control.py), answered from the master's shared tables.

The commands are declared once, in COMMANDS (usage, what it does): `help`'s answer (HELP), the
list below and hapolicyctl(8) (manpage.py) are made from it.

state is the service's health (up or down); admin is `enabled` or `disabled`, kept in the
service's slot of the pool's health table (health.py), so every worker sees it at once and a
reload keeps it for a service that stays (same name and address). A daemon without pool
sections has one pool, `default`. Each answer ends in a newline; an error is one line that
starts with `error:`.

Commands:
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .config import Config
    from .health import HealthTable
    from .log import Logger
    from .workertable import WorkerTable

COLUMNS = ("pool", "service", "address", "state", "admin", "weight", "answers", "failures")
#: Every command: its usage and what it does (the man page's text). `answer` dispatches them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("status", "a table, one line per service: pool, service, address, state (up or down: its "
     "health), admin (enabled or disabled), weight, answers, failures"),
    ("csv", "the same as `# pool,service,address,state,admin,weight,answers,failures` and one "
     "row per service (HAProxy `show stat` style; new columns are only ever appended)"),
    ("disable POOL/SERVICE", "take a service out: no worker sends it a new request from now on "
     "(requests already on their way finish); it is not checked while disabled; a HUP keeps it "
     "disabled if it keeps its name and address"),
    ("enable POOL/SERVICE", "give it back"),
    ("workers", "pid, requests served (as of its last heartbeat) and clients of each worker"),
    ("help", "the commands"),
)
HELP = "commands: " + ", ".join(usage for usage, _ in COMMANDS) + "\n"
__doc__ = (__doc__ or "") + "".join(f"    {usage:22} {text}\n" for usage, text in COMMANDS)


def rows(config: Config, health: Mapping[str, HealthTable], now: float) -> list[list[str]]:
    """One row of COLUMNS per service of every pool."""
    from .health import F

    out = []
    for pool in config.pools:
        table = health.get(pool.name)
        if table is None:
            continue
        for i, service in enumerate(pool.services):
            out.append([pool.name, service.name, service.address,
                        "down" if table.is_down(i, now) else "up",
                        "disabled" if table.disabled(i) else "enabled", str(service.weight),
                        str(table.service_counter(i, F.ANSWERS)),
                        str(table.service_counter(i, F.FAILURES))])
    return out


def aligned(header: Sequence[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    lines = [list(header), *body]
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n"
                   for line in lines)


def set_admin(config: Config, health: Mapping[str, HealthTable], name: str, disabled: bool,
              log: Logger) -> str:
    pool_name, slash, service_name = name.partition("/")
    if not slash or not pool_name or not service_name:
        return f"error: {name!r} is not POOL/SERVICE\n"
    pool = next((p for p in config.pools if p.name == pool_name), None)
    if pool is None or pool.name not in health:
        return f"error: no pool {pool_name!r}\n"
    found = [i for i, s in enumerate(pool.services) if s.name == service_name]
    if not found:
        return f"error: no service {service_name!r} in pool {pool_name!r}\n"
    word = "disabled" if disabled else "enabled"
    for i in found:
        health[pool.name].set_disabled(i, disabled)
    log.notice(f"control: service {name} {word}")
    return f"ok: {name} {word}\n"


def workers_answer(workers: Mapping[int, object], table: WorkerTable) -> str:
    body = [[str(pid), str(table.requests(w.slot)), str(table.clients(w.slot))]
            for pid, w in sorted(workers.items())]
    return aligned(("pid", "requests", "clients"), body)


def answer(line: str, config: Config, health: Mapping[str, HealthTable],
           workers: Mapping[int, object], table: WorkerTable, log: Logger) -> str:
    """The answer of one command line."""
    words = line.split()
    if not words:
        return "error: empty command; " + HELP
    command, args = words[0].lower(), words[1:]
    if command in ("disable", "enable"):
        if len(args) != 1:
            return f"error: usage: {command} POOL/SERVICE\n"
        return set_admin(config, health, args[0], command == "disable", log)
    if args:
        return f"error: {command} takes no arguments\n"
    if command == "status":
        return aligned(COLUMNS, rows(config, health, time.monotonic()))
    if command == "csv":
        return "# " + ",".join(COLUMNS) + "\n" + "".join(
            ",".join(row) + "\n" for row in rows(config, health, time.monotonic()))
    if command == "workers":
        return workers_answer(workers, table)
    if command == "help":
        return HELP
    return f"error: unknown command {command[:40]!r}; " + HELP
