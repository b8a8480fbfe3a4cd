"""Figure 5: weights 2:1, 300 requests on 30 connections of 10.

Contract: weighted(run, impl) fills run.report["weighted"][impl] with the requests, the
connections, the answers of A, of B and of neither ("other"), and for the daemon how many
connections each worker took ("connections_per_worker", most first); {"skipped": why} when
the original is missing. The daemon's 30 connections are open at once and get one request
each in turn, as Postfix's smtpd processes keep theirs; the original runs one process per
connection. The daemon's A must be within 3 % of two thirds, and nobody answers but A and B.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

from testkit.backends import FakeBackend
from testkit.perl import ASK_TIMEOUT, PerlConn
from testkit.ports import HOST
from testkit.protocol import PolicyClient, action_of, request
from testkit.protocol import service_spec as spec

from failoverkit.checks import unserved
from failoverkit.daemon import Daemon
from failoverkit.registry import close_clients, owned, started
from failoverkit.run import Run

CONNECTIONS, PER_CONNECTION = 30, 10


def weighted(run: Run, impl: str) -> None:
    """The answers of A (weight 2) and B (weight 1), and the workers' connections."""
    if impl == "perl" and run.perl.missing:
        run.report["weighted"]["perl"] = {"skipped": run.perl.missing}
        return
    with started(FakeBackend(action="A")) as a, started(FakeBackend(action="B")) as b:
        services = [spec("A", a.port, 10, 2), spec("B", b.port, 10, 1)]
        run.log(f"weighted: {impl}: {CONNECTIONS} connections x {PER_CONNECTION} requests")
        counts: Counter[str] = Counter()
        owners: Counter[int] = Counter()
        if impl == "daemon":
            _ask_daemon(run, services, counts, owners)
        else:
            _ask_perl(run, services, counts)
    _record(run, impl, counts, owners)
    excess = unserved(counts, {"A": a, "B": b})
    if excess:
        run.problem(f"weighted/{impl}: answers beyond the requests their backend served: "
                    f"{excess}")


def _ask_daemon(run: Run, services: list[str], counts: Counter[str],
                owners: Counter[int]) -> None:
    """All connections open at once, one request on each in turn."""
    with ExitStack() as stack:
        daemon = stack.enter_context(owned(Daemon(run.tmp, [
            *(x for s in services for x in ("-s", s))])))
        daemon.start()
        clients: list[PolicyClient] = []
        stack.enter_context(owned(clients, lambda: close_clients(clients)))
        for _ in range(CONNECTIONS):  # all open at once, as Postfix's smtpd processes keep them
            clients.append(PolicyClient(HOST, daemon.port))
        for i in range(PER_CONNECTION):  # one request on each connection in turn
            for c, client in enumerate(clients):
                answer = client.ask(request(instance=f"w{c}.{i}"), ASK_TIMEOUT)
                counts[action_of(answer)] += 1
                if i == 0:
                    owners[daemon.owner(client)] += 1


def _ask_perl(run: Run, services: list[str], counts: Counter[str]) -> None:
    """One process of the original per connection."""
    for c in range(CONNECTIONS):
        with owned(PerlConn(run.perl.argv(services))) as conn:
            for i in range(PER_CONNECTION):
                counts[conn.ask({"instance": f"w{c}.{i}"})[0]] += 1


def _record(run: Run, impl: str, counts: Counter[str], owners: Counter[int]) -> None:
    total = CONNECTIONS * PER_CONNECTION
    out: dict[str, Any] = {"requests": total, "connections": CONNECTIONS,
                           "A": counts["A"], "B": counts["B"],
                           "other": total - counts["A"] - counts["B"]}
    if impl == "daemon":
        out["connections_per_worker"] = sorted(owners.values(), reverse=True)
        if abs(counts["A"] - 2 * total / 3) > 0.03 * total:
            run.problem(f"weighted/daemon: A={counts['A']} B={counts['B']}, not 2:1")
    if out["other"]:
        run.problem(f"weighted/{impl}: {out['other']} answers from neither A nor B")
    run.report["weighted"][impl] = out

