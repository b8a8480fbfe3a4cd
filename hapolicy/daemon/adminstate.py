"""The daemon's --state-file: the operator's admin state and weights, kept across a restart.

`hapolicyctl disable`, `drain` and `weight` write into the shared health tables (commands.py),
which a HUP keeps but a restart does not. With --state-file PATH the master saves them in PATH
within a second of each change and restores them at start, before the first worker forks. The
file is text, one line per service that is not at its defaults:

    # hapolicy admin state: POOL SERVICE ADDRESS ADMIN WEIGHT
    grey GREY1 127.0.0.1:10023 disabled -
    grey GREY2 127.0.0.1:10024 enabled 3

ADMIN is enabled, drain or disabled, WEIGHT the operator's weight or `-` for the configured
one. A line is applied to the service of that pool, name and address; a line for a service the
configuration no longer has is dropped at the next save. The file is written to a fresh
temporary file and renamed over PATH, mode 0600 (safefile.replace_file: nothing made in advance
in its directory is followed or reused). A missing file is an empty state. The file is
trusted only when it is a regular file (not a symbolic link: it is opened without following
one), owned by root or the user the master runs as, and not writable by group or others
(safefile.distrust, the rule of spawn mode's file too): another one, say made by another user
in a shared directory, is not applied. That, a bad line, a file too large
or unreadable gives one warning and is ignored (the daemon starts with the services enabled);
a file that gave nothing but warnings is replaced at the first save, within a second of the
start. A save that fails is logged once, and tried again at the next change.

In spawn mode --state-file names the shared health table instead (statefile.py).
"""

from __future__ import annotations

import os

from hapolicy.base.safefile import distrust, replace_file
from hapolicy.config.values import ConfigError
from hapolicy.monitor.commands import MAX_WEIGHT
from hapolicy.tables.layout import ADMIN_STATES, ENABLED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig
    from hapolicy.tables.health import HealthTable

HEADER = "# hapolicy admin state: POOL SERVICE ADDRESS ADMIN WEIGHT\n"
MAX_BYTES = 1 << 20
Key = tuple  # (pool, service, address)


def snapshot(config: DaemonConfig, health: Mapping[str, HealthTable]) -> dict[Key, tuple[str, int]]:
    """(admin state, operator's weight or 0) of every service not at its defaults."""
    state = {}
    for pool in config.pools:
        table = health.get(pool.name)
        if table is None:
            continue
        for i, service in enumerate(pool.services):
            admin, weight = table.admin(i), table.weight(i, 0)
            if admin != ENABLED or weight:
                state[(pool.name, service.name, service.address)] = (admin, weight)
    return state


def parse(text: str, path: str) -> tuple[dict[Key, tuple[str, int]], list[str]]:
    """The entries of a state file's text, and a warning per line that is not one."""
    entries, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        weight = fields[4] if len(fields) == 5 else ""
        weight_ok = weight == "-" or (weight.isascii() and weight.isdigit()
                                      and 1 <= int(weight) <= MAX_WEIGHT)
        if len(fields) != 5 or fields[3] not in ADMIN_STATES or not weight_ok:
            problems.append(f"state file {path}:{number}: not POOL SERVICE ADDRESS "
                            f"enabled|drain|disabled WEIGHT|-: ignored")
            continue
        entries[tuple(fields[:3])] = (fields[3], 0 if weight == "-" else int(weight))
    return entries, problems


def format_state(state: Mapping[Key, tuple[str, int]]) -> str:
    return HEADER + "".join(f"{pool} {name} {address} {admin} {weight or '-'}\n"
                            for (pool, name, address), (admin, weight) in sorted(state.items()))


def read(path: str) -> tuple[dict[Key, tuple[str, int]], list[str]]:
    """The entries of the file at path (none when it does not exist) and what was wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"state file {path}: cannot read: {exc.strerror}: ignored"]
    try:
        why = distrust(os.fstat(fd))
        if why:
            return {}, [f"state file {path}: {why}: ignored"]
        data = os.read(fd, MAX_BYTES + 1)
    except OSError as exc:
        return {}, [f"state file {path}: cannot read: {exc.strerror}: ignored"]
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return {}, [f"state file {path}: larger than {MAX_BYTES} bytes: ignored"]
    return parse(data.decode("utf-8", "replace"), path)


def check_writable(path: str) -> None:
    """ConfigError at start when the directory of path cannot take the file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"state file {path}: no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"state file {path}: directory {directory} is not writable")


class AdminFile:
    """The master's --state-file: restore at start, save after each change."""

    def __init__(self, path: str, log: Logger) -> None:
        self.path = path
        self.log = log
        self.saved: dict[Key, tuple[str, int]] | None = None  # what the file holds
        self.failed: dict[Key, tuple[str, int]] | None = None  # a save of this failed

    def restore(self, config: DaemonConfig, health: Mapping[str, HealthTable]) -> None:
        """Apply the file's entries to the services that are still there, and log them."""
        entries, problems = read(self.path)
        for problem in problems[:3]:
            self.log.warning(problem)
        if len(problems) > 3:
            self.log.warning(f"state file {self.path}: {len(problems) - 3} more bad lines ignored")
        by_key = {(p.name, s.name, s.address): (p.name, i)
                  for p in config.pools for i, s in enumerate(p.services)}
        for key, (admin, weight) in entries.items():
            where = by_key.get(key)
            if where is None or where[0] not in health:
                self.log.info(f"state file {self.path}: no service {key[0]}/{key[1]} at "
                              f"{key[2]} now: dropped")
                continue
            table = health[where[0]]
            table.set_admin(where[1], admin)
            table.set_weight(where[1], weight)
            self.log.notice(f"state file: service {key[0]}/{key[1]} {admin}"
                            + (f", weight {weight}" if weight else ""))
        # a file that gave nothing but warnings (not trusted, unreadable, only bad lines) is
        # replaced at the first save, not left for the next start to warn about again
        self.saved = None if problems and not entries else entries

    def save_if_changed(self, config: DaemonConfig, health: Mapping[str, HealthTable]) -> None:
        """Write the file when the admin state differs from what it holds."""
        state = snapshot(config, health)
        if state == self.saved or state == self.failed:
            return
        try:
            replace_file(self.path, format_state(state).encode(), 0o600)
        except OSError as exc:
            self.log.warning(f"state file {self.path}: cannot save the admin state: "
                             f"{exc.strerror or exc}")
            self.failed = state
            return
        self.saved, self.failed = state, None
