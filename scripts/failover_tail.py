"""Figure 8 of scripts/failover.py: the latency tail with and without hedging, with and without
a shadow, one daemon, one run.

One daemon (1 worker, so the counters are one token bucket's and one mirror's) serves a pool
per row on a port of its own, all from one config file:

  plain        P, a backend that answers at once
  shadow       the same, with a shadow pool whose backend answers at once (and agrees)
  shadow slow  the same, with a shadow whose backend answers after 10 s
  slow         P slow on every 10th request (500 ms), S (prio 20) behind it, no hedge
  hedged       the same (backends of its own), hedge = 0.05, hedge-max = 15

Each row is CONNECTIONS persistent connections sending their requests one after the other
(closed loop), the rows one after the other; every answer is checked. It reports p50, p99,
p99.9 and max, and the pool's counters from hapolicyctl csv (hedged, hedge_won, shadow_*).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable

from testkit.backends import FakeBackend
from testkit.ctl import csv_rows
from testkit.ports import HOST, free_port
from testkit.protocol import PolicyClient, action_of, request

CONNECTIONS = 8
SLOW_EVERY, SLOW_DELAY = 10, 0.5
HEDGE, HEDGE_MAX = 0.05, 15
ROWS = ("plain", "shadow", "shadow slow", "slow", "hedged")


def config_text(ports: dict[str, int], backends: dict[str, FakeBackend]) -> str:
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
                   + f"hedge = {HEDGE}\nhedge-max = {HEDGE_MAX}\n")
            + "[pool next]\n" + svc("N", "next") + "[pool stuck]\n" + svc("T", "stuck"))


def drive(port: int, requests: int, expected: set[str]) -> tuple[list[float], list[str]]:
    """CONNECTIONS connections, requests in all: (seconds each took, wrong answers)."""
    times: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def one(conn: int) -> None:
        with PolicyClient(HOST, port) as client:
            for n in range(requests // CONNECTIONS):
                began = time.monotonic()
                action = action_of(client.ask(request(recipient=f"c{conn}-{n}@example.net"),
                                              timeout=30))
                took = time.monotonic() - began
                with lock:
                    times.append(took)
                    if action not in expected:
                        wrong.append(action)

    threads = [threading.Thread(target=one, args=(c,)) for c in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return times, wrong


def tail_figure(tmp: str, quick: bool, daemon_class: Any, summary: Callable[..., dict],
                log: Callable[[str], None]) -> dict[str, Any]:
    """The figure's rows, by name."""
    requests = 400 if quick else 1000
    out: dict[str, Any] = {"requests": requests, "connections": CONNECTIONS, "rows": {}}
    with ExitStack() as stack:
        backends = {
            "fast": FakeBackend(action="OK primary"), "next": FakeBackend(action="OK shadow"),
            "stuck": FakeBackend(action="OK stuck", delay=10.0),
            "slow1": FakeBackend(action="OK primary", slow_every=SLOW_EVERY,
                                 slow_delay=SLOW_DELAY),
            "slow2": FakeBackend(action="OK primary", slow_every=SLOW_EVERY,
                                 slow_delay=SLOW_DELAY),
            "second": FakeBackend(action="OK second")}
        for backend in backends.values():
            backend.start()
            stack.callback(backend.stop)
        ports = {row: free_port() for row in ROWS}
        conf = os.path.join(tmp, "tail.conf")
        with open(conf, "w") as handle:
            handle.write(config_text(ports, backends))
        control = os.path.join(tmp, "tail.control")
        daemon = daemon_class(tmp, ["-c", conf, "--control", control], workers=1)
        daemon.listen = ""
        stack.callback(daemon.close)
        daemon.start()
        for row in ROWS:
            log(f"tail: {row}: {requests} requests on {CONNECTIONS} connections")
            before = len(backends["second"].requests)
            times, wrong = drive(ports[row], requests, {"OK primary", "OK second"})
            pool = row.replace(" ", "")
            counters = csv_rows(control)[f"{pool}/P"]
            out["rows"][row] = {
                **summary(times), "p999": _quantile(times, 99.9), "wrong": len(wrong),
                "second_requests": len(backends["second"].requests) - before,
                **{k: int(counters[k]) for k in ("hedged", "hedge_won", "shadow_agree",
                                                 "shadow_disagree", "shadow_failed",
                                                 "shadow_dropped")}}
    return out


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100.0))]


def render_tail(tail: dict[str, Any], fmt_s: Callable[[float | None], str],
                table: Callable[..., list[str]]) -> list[str]:
    out = [f"8. Tail latency, hedging and shadows: {tail['requests']} requests per row on "
           f"{tail['connections']} connections, one daemon (1 worker); slow: every "
           f"{SLOW_EVERY}th request waits {SLOW_DELAY * 1000:.0f} ms; hedged: hedge = {HEDGE}, "
           f"hedge-max = {HEDGE_MAX}"]
    rows = []
    for name, r in tail["rows"].items():
        shadow = (f"{r['shadow_agree']}/{r['shadow_disagree']}/{r['shadow_failed']}/"
                  f"{r['shadow_dropped']}")
        rows.append([name, fmt_s(r["p50"]), fmt_s(r["p99"]), fmt_s(r["p999"]), fmt_s(r["max"]),
                     str(r["wrong"]), f"{r['hedged']}/{r['hedge_won']}",
                     str(r["second_requests"]), shadow])
    out += table(["row", "p50", "p99", "p99.9", "max", "wrong", "hedged/won", "S saw",
                  "shadow agree/disagree/failed/dropped"], rows)
    return out
