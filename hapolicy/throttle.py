"""The boot throttle: how long the master waits before it starts a worker again.

A worker that dies before it says READY died at boot (a config it cannot use, a user it cannot
become, a crash on import). Restarting it in a tight loop would only fill the log, so each such
death doubles the pause before the next start (1 s, 2 s, 4 s … up to THROTTLE_MAX), and while
workers keep dying they start one at a time. The first worker of the current generation that
says READY ends the streak: the missing ones then start at once. The monitor has a throttle of
its own, judged the same way (`judge_death`).
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .log import Logger

THROTTLE_MAX = 30.0
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


class BootThrottle:
    """Counts deaths at boot in a row and says when the next start is allowed."""

    def __init__(self) -> None:
        self.failures = 0
        self.next_start = 0.0  # monotonic time; no start before it

    def pause(self) -> float:
        return min(2.0 ** (self.failures - 1), THROTTLE_MAX) if self.failures else 0.0

    def died_at_boot(self, now: float) -> float:
        """Count one more death at boot; returns the pause before the next start."""
        self.failures += 1
        self.next_start = max(self.next_start, now + self.pause())
        return self.pause()

    def started(self, now: float) -> bool:
        """After a start: True when no other may follow in this pass (still failing)."""
        if not self.failures:
            return False
        self.next_start = now + self.pause()
        return True

    def defer(self, until: float) -> None:
        """No start before `until` (a fork that failed, no free slot)."""
        self.next_start = until

    def reset(self) -> None:
        self.failures = 0
        self.next_start = 0.0

    def may_start(self, now: float) -> bool:
        return now >= self.next_start

    def judge_death(self, what: str, pid: int, code: int, ready: bool, started: float,
                    now: float, log: Logger) -> None:
        """A child (a worker, the monitor) died unasked: count a death at boot, or log that it
        is replaced. The one judgement of such a death."""
        if not ready and failed_by_itself(code):
            pause = self.died_at_boot(now)
            log.error(f"{what} {pid} died at boot (status {code}); {self.failures} in a row: "
                      f"next start in {pause:g}s")
        else:
            log.warning(f"{what} {pid} exited with status {code} after {now - started:.1f}s: "
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
