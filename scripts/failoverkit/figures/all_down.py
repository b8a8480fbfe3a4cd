"""Figure 6: every service down, two silent services (TIMEOUT SILENT_TIMEOUT each).

Contract: all_down(run, impl, checks) fills run.report["all_down"][row] (row: "perl", or
"daemon, --check-interval CHECKS") with the first request's time, the summary of the
following ones and the live requests (not checks) that reached the services; {"skipped": why}
when the original is missing. Every answer must be the default, DEFAULTED. The daemon answers
it at once after the first request; the original waits for both timeouts on every request.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Callable

from testkit.backends import FakeBackend
from testkit.perl import PerlConn
from testkit.protocol import service_spec as spec

from failoverkit.daemon import Daemon
from failoverkit.registry import owned, started
from failoverkit.run import Run
from failoverkit.settings import SILENT_TIMEOUT
from failoverkit.stats import summary

Ask = Callable[..., tuple[str, float]]


def all_down(run: Run, impl: str, checks: str = "0") -> None:
    """The first request, then the following ones, with S1 and S2 silent."""
    row = impl if impl == "perl" else f"daemon, --check-interval {checks}"
    if impl == "perl" and run.perl.missing:
        run.report["all_down"][row] = {"skipped": run.perl.missing}
        return
    with started(FakeBackend(mode="silent")) as s1, started(FakeBackend(mode="silent")) as s2, \
            ExitStack() as stack:
        services = [spec("S1", s1.port, 10, 1, SILENT_TIMEOUT),
                    spec("S2", s2.port, 20, 1, SILENT_TIMEOUT)]
        ask, following = _proxy(run, impl, services, checks, stack)
        run.log(f"all down: {row}: {1 + following} requests")
        answers, times = [], []
        for i in range(1 + following):
            action, took = ask({"sender": f"d{i}@example.org", "instance": f"d{i}"})
            answers.append(action)
            times.append(took)
        if set(answers) != {"DEFAULTED"}:
            run.problem(f"all down/{row}: answers not the default: {Counter(answers)}")
        run.report["all_down"][row] = {
            "first": times[0], "following": summary(times[1:]),
            "live_requests": len([r for r in s1.requests + s2.requests
                                  if r.get("sender") != "hapolicy-check@localhost"])}


def _proxy(run: Run, impl: str, services: list[str], checks: str,
           stack: ExitStack) -> tuple[Ask, int]:
    """(the ask of the daemon or of one Perl process, how many requests follow the first)."""
    if impl == "daemon":
        daemon = stack.enter_context(owned(Daemon(run.tmp, [
            *(a for s in services for a in ("-s", s)), "-d", "DEFAULTED",
            "--cooldown", "60", "--check-interval", checks])))
        daemon.start()
        return daemon.ask, run.following
    ask = stack.enter_context(owned(PerlConn(run.perl.argv(
        services, ("-d", "DEFAULTED"))))).ask
    return ask, run.perl_following["silent"]
