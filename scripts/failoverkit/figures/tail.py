"""Figure 8: the latency tail with and without hedging, with and without a shadow.

Contract: tail(run) fills run.report["tail"] with {"requests", "connections", "rows"}: per row
p50, p99, p99.9 and max (and n, min), the answers not from P or S ("wrong"), the requests S
saw, and the pool's counters from hapolicyctl csv (hedged, hedge_won, shadow_*); then checks
that no answer was wrong and that hedging cut the slow row's p99 by half at least, with at
most 15 % of the requests hedged.

One daemon (1 worker, so the counters are one token bucket's and one mirror's) serves a pool
per row on a port of its own, all from one config file:

  plain        P, a backend that answers at once
  shadow       the same, with a shadow pool whose backend answers at once (and agrees)
  shadow slow  the same, with a shadow whose backend answers after 10 s
  slow         P slow on every 10th request (500 ms), S (prio 20) behind it, no hedge
  hedged       the same (backends of its own), hedge = 0.05, hedge-max = 15

Each row is TAIL_CONNECTIONS persistent connections sending their requests one after the
other (closed loop), the rows one after the other; every answer is checked.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from typing import Any

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, action_of, request

from failoverkit.daemon import Daemon
from failoverkit.run import Run
from failoverkit.settings import (
    TAIL_CONNECTIONS,
    TAIL_HEDGE,
    TAIL_HEDGE_MAX,
    TAIL_ROWS,
    TAIL_SLOW_DELAY,
    TAIL_SLOW_EVERY,
)
from failoverkit.stats import nearest_rank, summary

COUNTERS = ("hedged", "hedge_won", "shadow_agree", "shadow_disagree", "shadow_failed",
            "shadow_dropped")


def tail(run: Run) -> None:
    """Measure the figure, then check it."""
    run.report["tail"] = measure(run)
    rows = run.report["tail"]["rows"]
    for name, row in rows.items():
        if row["wrong"]:
            run.problem(f"tail/{name}: {row['wrong']} answers not from P or S")
    hedged, slow = rows.get("hedged"), rows.get("slow")
    if hedged and slow and not hedged["p99"] < slow["p99"] / 2:
        run.problem(f"tail: hedged p99 {hedged['p99']:.3f} s is not below half of "
                    f"{slow['p99']:.3f} s without hedging")
    if hedged and hedged["hedged"] > hedged["n"] * 15 // 100:
        run.problem(f"tail: {hedged['hedged']} hedges of {hedged['n']} requests")


def config_text(ports: dict[str, int], backends: dict[str, FakeBackend]) -> str:
    """The daemon's config file: a pool per row, each on its own port."""
    def svc(name: str, key: str, prio: int = 10) -> str:
        return f"service = {name}={HOST}:{backends[key].port}:{prio}\n"

    def pool(name: str, port: int, body: str) -> str:
        return f"[pool {name}]\nlisten = {HOST}:{port}\nsticky-instance = no\n{body}"

    return ("check-interval = 0\n"
            + pool("plain", ports["plain"], svc("P", "fast"))
            + pool("shadow", ports["shadow"], svc("P", "fast") + "shadow = next\n")
            + pool("shadowslow", ports["shadow slow"], svc("P", "fast") + "shadow = stuck\n")
            + pool("slow", ports["slow"], svc("P", "slow1", 10) + svc("S", "second", 20))
            + pool("hedged", ports["hedged"], svc("P", "slow2", 10) + svc("S", "second", 20)
                   + f"hedge = {TAIL_HEDGE}\nhedge-max = {TAIL_HEDGE_MAX}\n")
            + "[pool next]\n" + svc("N", "next") + "[pool stuck]\n" + svc("T", "stuck"))


def drive(port: int, requests: int, expected: set[str]) -> tuple[list[float], list[str]]:
    """TAIL_CONNECTIONS connections, requests in all: (seconds each took, wrong answers)."""
    times: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def one(conn: int) -> None:
        with PolicyClient(HOST, port) as client:
            for n in range(requests // TAIL_CONNECTIONS):
                began = time.monotonic()
                action = action_of(client.ask(request(recipient=f"c{conn}-{n}@example.net"),
                                              timeout=30))
                took = time.monotonic() - began
                with lock:
                    times.append(took)
                    if action not in expected:
                        wrong.append(action)

    threads = [threading.Thread(target=one, args=(c,)) for c in range(TAIL_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return times, wrong


def _backends() -> dict[str, FakeBackend]:
    """The backends of the rows, by the name the config gives them (not started)."""
    def slow() -> FakeBackend:
        return FakeBackend(action="OK primary", slow_every=TAIL_SLOW_EVERY,
                           slow_delay=TAIL_SLOW_DELAY)

    return {"fast": FakeBackend(action="OK primary"), "next": FakeBackend(action="OK shadow"),
            "stuck": FakeBackend(action="OK stuck", delay=10.0),
            "slow1": slow(), "slow2": slow(), "second": FakeBackend(action="OK second")}


def measure(run: Run) -> dict[str, Any]:
    """The figure's rows, by name."""
    requests = 400 if run.quick else 1000
    out: dict[str, Any] = {"requests": requests, "connections": TAIL_CONNECTIONS, "rows": {}}
    with ExitStack() as stack:
        backends = _backends()
        for backend in backends.values():
            backend.start()
            stack.callback(backend.stop)
        ports = {row: free_port() for row in TAIL_ROWS}
        conf = os.path.join(run.tmp, "tail.conf")
        with open(conf, "w") as handle:
            handle.write(config_text(ports, backends))
        control = os.path.join(run.tmp, "tail.control")
        daemon = Daemon(run.tmp, ["-c", conf, "--control", control], workers=1)
        daemon.listen = ""
        stack.callback(daemon.close)
        daemon.start()
        for row in TAIL_ROWS:
            run.log(f"tail: {row}: {requests} requests on {TAIL_CONNECTIONS} connections")
            out["rows"][row] = _row(row, ports[row], requests, backends["second"], control)
    return out


def _row(row: str, port: int, requests: int, second: FakeBackend,
         control: str) -> dict[str, Any]:
    """One row: its latencies, wrong answers, S's requests, the pool's counters."""
    before = len(second.requests)
    times, wrong = drive(port, requests, {"OK primary", "OK second"})
    counters = csv_rows(control)[f"{row.replace(' ', '')}/P"]
    return {**summary(times), "p999": nearest_rank(times, 99.9), "wrong": len(wrong),
            "second_requests": len(second.requests) - before,
            **{k: int(counters[k]) for k in COUNTERS}}
