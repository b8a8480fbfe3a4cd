"""Figures 1-2: the first failover while the primary is dead, then the following requests.

Contract: daemon(run, case) and perl(run, case) fill run.report["failover"][case][impl] with
{"first": seconds, "following": summary, "wrong": count, "secondary_requests": count} (plus
"primary_requests" for a silent P; for the daemon also the log line of P's fall and the
following requests served by each worker, the first request's worker first), or
{"skipped": why}. P (prio 10) is silent (TIMEOUT 2 s), blackholed (--connect-timeout 1,
TIMEOUT 30) or refusing; S (prio 20) answers at once. The daemon runs with --cooldown 60 and
no checks, so no probe of P falls into the requests that follow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Callable

from testkit.backends import FakeBackend
from testkit.perl import PerlConn
from testkit.ports import refused_port
from testkit.protocol import PolicyClient
from testkit.protocol import service_spec as spec
from testkit.stubs import Blackhole

from failoverkit.checks import unserved
from failoverkit.daemon import Daemon
from failoverkit.registry import close_clients, owned, started
from failoverkit.run import Run
from failoverkit.settings import BLACKHOLE_TIMEOUT, CONNECT_TIMEOUT, SILENT_TIMEOUT
from failoverkit.stats import summary

Ask = Callable[..., tuple[str, float]]


@contextmanager
def dead_primary(case: str) -> Iterator[tuple[list[str], list[str], FakeBackend | None,
                                              FakeBackend]]:
    """(daemon args, perl services, the silent backend or None, the secondary) for one kind
    of death."""
    with ExitStack() as stack:
        sec = stack.enter_context(started(FakeBackend(action="OK secondary")))
        silent = None
        extra: list[str] = ["--cooldown", "60", "--check-interval", "0"]
        if case == "silent":
            silent = stack.enter_context(started(FakeBackend(mode="silent")))
            port, timeout = silent.port, SILENT_TIMEOUT
        elif case == "blackhole":
            port = stack.enter_context(started(Blackhole())).port
            timeout = BLACKHOLE_TIMEOUT
            extra += ["--connect-timeout", str(CONNECT_TIMEOUT)]
        else:
            port, timeout = refused_port(), None
        services = [spec("P", port, 10, 1 if timeout else None, timeout),
                    spec("S", sec.port, 20)]
        daemon_args = [a for s in services for a in ("-s", s)] + extra
        yield daemon_args, services, silent, sec


def daemon(run: Run, case: str) -> None:
    """The daemon's row; its client connections stay open, as Postfix's do."""
    held: list[PolicyClient] = []
    owners: Counter[int] = Counter()

    def ask(attrs: dict[str, str] | None = None) -> tuple[str, float]:
        return proc.ask(attrs, held, owners)

    with dead_primary(case) as (args, _, silent, sec), \
            owned(Daemon(run.tmp, args)) as proc, owned(held, lambda: close_clients(held)):
        proc.start()
        out = measure(run, case, "daemon", ask, run.following, silent, sec)
        line = proc.log.matching("service P (")
        out["log"] = line[0][1] if line else ""
        # the worker of the first request, then how many of the following each one served
        first = next(iter(owners))
        owners[first] -= 1
        out["following_per_worker"] = [owners[first]] + [
            n for pid, n in owners.items() if pid != first]
        run.report["failover"][case]["daemon"] = out


def perl(run: Run, case: str) -> None:
    """The Perl original's row: one spawn-style process, fed one request at a time."""
    following = run.perl_following[case]
    if run.perl.missing:
        run.report["failover"][case]["perl"] = {"skipped": run.perl.missing}
        return
    if case == "blackhole" and not following:
        run.report["failover"][case]["perl"] = {
            "skipped": f"--quick: it costs {BLACKHOLE_TIMEOUT} s per request"}
        return
    with dead_primary(case) as (_, services, silent, sec), \
            owned(PerlConn(run.perl.argv(services))) as conn:
        run.report["failover"][case]["perl"] = measure(
            run, case, "perl", conn.ask, following, silent, sec)


def measure(run: Run, case: str, impl: str, ask: Ask, following: int,
            silent: FakeBackend | None, sec: FakeBackend) -> dict[str, Any]:
    """The first request, then `following` ones; every answer must be S's."""
    run.log(f"{case}: {impl}: first failover, then {following} requests")
    action, first = ask()
    wrong = [action] if action != "OK secondary" else []
    times = []
    for i in range(following):
        action, took = ask({"sender": f"s{i}@example.org", "instance": f"f{i}"})
        times.append(took)
        if action != "OK secondary":
            wrong.append(action)
    if wrong:
        run.problem(f"{case}/{impl}: answers not from S: {Counter(wrong)}")
    answered_by_s = following + 1 - len(wrong)
    excess = unserved(Counter({"OK secondary": answered_by_s}), {"OK secondary": sec})
    if excess:
        run.problem(f"{case}/{impl}: {answered_by_s} answers from S, but S served "
                    f"{len(sec.requests)} requests")
    out = {"first": first, "following": summary(times), "wrong": len(wrong),
           "secondary_requests": len(sec.requests)}
    if silent is not None:
        out["primary_requests"] = len(silent.requests)
    return out
