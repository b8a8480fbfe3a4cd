"""`Health`: the one path through which a process changes its services' health, for a live
request (`ok`, `failed`) or a check (`mark_up`, `mark_down`), each change logged once.

The steps themselves are the table's (health.py); what this adds is the process's policy: the
cool-down and its cap from the configuration, whether a failure's outcome counts against the
service and doubles its pause (outcome.py), who owns the recovery (the table's CHECKED: the
master's checks, or a live request's probe), the peers a service that comes back rejoins in
round robin, and the log lines.
"""

from __future__ import annotations

import math

from hapolicy.base.outcome import counts_against_service, doubles_pause
from hapolicy.tables.health import peers
from hapolicy.tables.layout import DOWN_UNTIL, FAILURES, FAILURES_BY_OUTCOME, SLOT, STATS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from hapolicy.base.log import Logger
    from hapolicy.config.records import PoolConfig, Service
    from hapolicy.tables.health import HealthTable


class Health:
    """The one path for state changes of one process's services, each logged once.

    While the table says `checked` (the master's checks run on it and own the recovery), a
    live answer never brings a service back, and a service marked down stays down until
    `mark_up`. Otherwise a live request probes it after its cool-down (health.py).
    """

    def __init__(self, table: HealthTable, services: Sequence[Service], config: PoolConfig,
                 log: Logger) -> None:
        self.table = table
        self.services = list(services)
        self.cooldown = config.cooldown
        self.cooldown_max = config.cooldown_max
        self.recheck = config.check_down_interval
        self.prefix = config.log_prefix
        self.log = log
        self.peers = [peers(services, i) for i in range(len(services))]

    def ok(self, i: int) -> None:
        """A live request got a good answer from service i."""
        table = self.table
        if table.f[i * SLOT + DOWN_UNTIL] != 0.0 and not table.checked:  # no checks own it
            self.mark_up(i)

    def failed(self, i: int, outcome: int, detail: str, now: float) -> bool:
        """A live request failed on service i; True when that took it down just now."""
        if not counts_against_service(outcome):
            return False
        f = self.table.f
        f[i * SLOT + FAILURES] += 1.0
        f[self.table.stats + i * STATS + FAILURES_BY_OUTCOME + outcome] += 1.0
        return self.mark_down(i, outcome, detail, now)

    def mark_up(self, i: int, why: str = "") -> None:
        """Bring service i back (no-op when it is up)."""
        if self.table.record_success(i):
            self.table.rejoin(i, self.peers[i])
            service = self.services[i]
            self.log.notice(f"{self.prefix}service {service.name} ({service.address}) up{why}")

    def mark_down(self, i: int, outcome: int, detail: str, now: float) -> bool:
        """Mark service i down after a failure; True when it was up before."""
        table = self.table
        if table.checked:
            was_up, _ = table.record_failure(i, now, math.inf, math.inf)
            after = f"checked every {self.recheck:g}s until it answers"
        else:
            was_up, pause = table.record_failure(i, now, self.cooldown, self.cooldown_max,
                                                 doubling=doubles_pause(outcome))
            after = f"retry in {pause:g}s"
        if was_up:
            service = self.services[i]
            self.log.warning(f"{self.prefix}service {service.name} ({service.address}) down: "
                             f"{detail}, {after}")
        return was_up
