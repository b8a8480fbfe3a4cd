"""The boot throttle: how long the master waits before it starts a worker again.

A worker that dies before it says READY died at boot (a config it cannot use, a user it cannot
become, a crash on import); one that exits by itself (a status, a crash) less than
STABLE_SECONDS after its start fails the same way, though it said READY (a fault that every
worker meets early: a request that crashes it, a table it cannot read). Restarting it in a
tight loop would only fill the log, so each such death doubles the pause before the next start
(1 s, 2 s, 4 s … up to THROTTLE_MAX), and while workers keep dying they start one at a time.
A worker started after the last such death that says READY lets the missing ones start at once;
the streak ends when one of them has run STABLE_SECONDS (`ready`). The monitor has a throttle
of its own, judged the same way (`judge_death`).
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from hapolicy.base.log import Logger

THROTTLE_MAX = 30.0
STABLE_SECONDS = 10.0
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


class BootThrottle:
    """Counts early deaths in a row and says when the next start is allowed."""

    def __init__(self) -> None:
        self.failures = 0
        self.next_start = 0.0  # monotonic time; no start before it
        self.failed_at = 0.0  # the last death of the streak
        self.proven = False  # a child started since then said READY: the others start together

    def pause(self) -> float:
        return min(2.0 ** (self.failures - 1), THROTTLE_MAX) if self.failures else 0.0

    def died_at_boot(self, now: float) -> float:
        """Count one more early death; returns the pause before the next start."""
        self.failures += 1
        self.failed_at = now
        self.proven = False
        self.next_start = max(self.next_start, now + self.pause())
        return self.pause()

    def started(self, now: float) -> bool:
        """After a start: True when no other may follow in this pass (still failing)."""
        if not self.failures or self.proven:
            return False
        self.next_start = now + self.pause()
        return True

    def ready(self, serving: Iterable[float], now: float) -> bool:
        """Children that started at the times `serving` said READY: after a streak, one started
        since its last death lets the others start at once, and ends the streak (True) once it
        has run STABLE_SECONDS."""
        since = [started for started in serving if started >= self.failed_at]
        if not self.failures or not since:
            return False
        started = min(since)
        if not self.proven:
            self.proven = True
            self.next_start = now
        if now - started < STABLE_SECONDS:
            return False
        self.reset()
        return True

    def defer(self, until: float) -> None:
        """No start before `until` (a fork that failed, no free slot)."""
        self.next_start = until

    def reset(self) -> None:
        self.failures = 0
        self.next_start = 0.0
        self.failed_at = 0.0
        self.proven = False

    def may_start(self, now: float) -> bool:
        return now >= self.next_start

    def judge_death(self, what: str, pid: int, code: int, ready: bool, started: float,
                    now: float, log: Logger) -> None:
        """A child (a worker, the monitor) died unasked: count an early death, or log that it
        is replaced. The one judgement of such a death."""
        lived = now - started
        if failed_by_itself(code) and (not ready or lived < STABLE_SECONDS):
            pause = self.died_at_boot(now)
            when = f"{lived:.1f}s after its start" if ready else "at boot"
            log.error(f"{what} {pid} died {when} (status {code}); {self.failures} in a row: "
                      f"next start in {pause:g}s")
        else:
            log.warning(f"{what} {pid} exited with status {code} after {lived:.1f}s: "
                        "replacing it")


def exit_code(status: int) -> int:
    """A wait status as an exit code (negative: the signal that killed it)."""
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:
        return status


def failed_by_itself(code: int) -> bool:
    """An exit status or a crash: not a kill from outside (kill -9, an operator's TERM)."""
    return code > 0 or -code in CRASH_SIGNALS
