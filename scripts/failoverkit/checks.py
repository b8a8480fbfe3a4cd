"""Checks of the answers and of the figures: what makes a run's exit status 1.

Contract: unserved() compares the answers counted per backend with the requests each backend
served (none beyond them should exist: a proxy that makes an answer up, or caches one, shows
there). sanity(run) checks the figures after the run (first failovers near their timeout,
following requests far below it, defaults at once, waiting requests released) and records a
problem for each that does not hold; a figure that has no result is not checked.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from testkit.backends import FakeBackend

from failoverkit.run import Run
from failoverkit.settings import CONNECT_TIMEOUT, SILENT_TIMEOUT


def unserved(answers: Counter[str], backends: dict[str, FakeBackend]) -> dict[str, int]:
    """Answers of each backend's distinctive action beyond the requests it served (should be
    none: a proxy that makes an answer up, or caches one, shows here)."""
    excess = {action: answers[action] - len(backend.requests)
              for action, backend in backends.items()}
    return {action: n for action, n in excess.items() if n > 0}


def sanity(run: Run) -> None:
    """Every check of the figures, in the order of the figures."""
    failover = run.report["failover"]
    for case, expected in (("silent", SILENT_TIMEOUT), ("blackhole", CONNECT_TIMEOUT)):
        if failover[case].get("daemon"):
            _first_failover(run, case, expected, failover[case]["daemon"])
    _defaults_at_once(run, run.report["all_down"])
    _released_at_once(run, run.report["released"])
    silent = failover["silent"].get("daemon")
    if silent and silent.get("primary_requests", 1) != 1:
        run.problem(f"failover/silent/daemon: P got {silent['primary_requests']} requests, "
                    f"not 1")


def _first_failover(run: Run, case: str, expected: float, result: dict[str, Any]) -> None:
    """The first request pays the timeout, the following ones do not."""
    if not 0.8 * expected <= result["first"] < expected + 3:
        run.problem(f"failover/{case}/daemon: first failover {result['first']:.3f} s, "
                    f"expected about {expected} s")
    p99 = result["following"]["p99"]
    if p99 is not None and p99 > result["first"] / 4:
        run.problem(f"failover/{case}/daemon: following p99 {p99:.3f} s is not far "
                    f"below the first failover")


def _defaults_at_once(run: Run, all_down: dict[str, Any]) -> None:
    """Every service down: the daemon answers its default at once after the first request."""
    for row, result in all_down.items():
        if row.startswith("daemon") and "following" in result and (
                result["following"]["max"] or 0) > 0.05:
            run.problem(f"all down/{row}: a following request took "
                        f"{result['following']['max']:.3f} s, not the default at once")


def _released_at_once(run: Run, released: dict[str, Any]) -> None:
    """The requests waiting on a dead service are all answered soon after the first."""
    for workers, result in released.items():
        if result["last_after_first"] > (0.1 if workers == "1" else 0.3):
            run.problem(f"released/{workers}: the last waiting request was answered "
                        f"{result['last_after_first']:.3f} s after the first")
