"""Figure 9: slow, not dead: hapolicy's balances and HAProxy's leastconn side by side.

Contract: slow(run) fills run.report["slow"] with one entry per scenario of SLOW_SCENARIOS
(settings): {"clients", "per_client", "rows": {row: result}}, a result being the requests'
summary (n, p50, p99, max, min), the seconds the row took, and per backend the answers it
gave ("answers"), the connections it accepted ("connections") and the most requests it held
at once ("max_pending"); {"skipped": why} for HAProxy's rows when it is missing. It records a
problem for an answer from neither backend, one beyond the requests its backend served
(checks.unserved), a request short, a least-latency slow share not under the weighted one,
and a serial backend that held more than 2 requests behind a limit of 2.

Each row starts its own two backends (testkit FakeBackend, a distinctive action each) and its
own proxy: the daemon (2 workers, --sticky-instance no --check-interval 0, and the row's
options) or HAProxy (TCP mode, one thread, balance leastconn, the row's server maxconn). The
clients connect first, all of them, then each sends its share of the requests one after the
other on its connection (closed loop, a new `instance` each), as smtpd processes keep theirs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

from testkit.backends import FakeBackend
from testkit.ports import HOST
from testkit.protocol import PolicyClient, action_of, request

from failoverkit.checks import unserved
from failoverkit.daemon import Daemon
from failoverkit.haproxy import HAProxy, haproxy_missing
from failoverkit.registry import owned, started
from failoverkit.run import Run
from failoverkit.settings import SLOW_SCENARIOS
from failoverkit.stats import summary

ASK_TIMEOUT = 60.0  # longer than any wait of these rows (a serial backend's queue)


def slow(run: Run) -> None:
    """Every scenario, every row; then the checks."""
    for name, scenario in SLOW_SCENARIOS.items():
        clients, per_client = scenario["clients"], scenario["per_client"][run.quick]
        out: dict[str, Any] = {"clients": clients, "per_client": per_client, "rows": {}}
        run.report["slow"][name] = out
        for row, how in scenario["rows"].items():
            run.log(f"slow: {name}: {row}: {clients} clients x {per_client} requests")
            run.guarded(f"slow/{name}/{row}", _row, scenario, how, out["rows"], row)
    _checks(run, run.report["slow"])


def _backends(scenario: dict[str, Any]) -> dict[str, FakeBackend]:
    """The scenario's backends by name (not started): each answers `OK <name>`."""
    return {name: FakeBackend(name=name, action=f"OK {name}", delay=spec["delay"],
                              serial=spec.get("serial", False))
            for name, spec in scenario["backends"].items()}


def _row(run: Run, scenario: dict[str, Any], how: dict[str, Any], rows: dict[str, Any],
         row: str) -> None:
    """One row: its backends and proxy, the load, what each backend saw."""
    if how["proxy"] == "haproxy" and haproxy_missing():
        rows[row] = {"skipped": haproxy_missing()}
        return
    clients, per_client = scenario["clients"], scenario["per_client"][run.quick]
    with ExitStack() as stack:
        backends = _backends(scenario)
        for backend in backends.values():
            stack.enter_context(started(backend))
        port = _proxy(run, stack, scenario, how, backends)
        began = time.monotonic()
        times, answers, errors = drive(port, clients, per_client)
        seconds = time.monotonic() - began
    result = {**summary(times), "seconds": round(seconds, 2),
              "answers": {n: answers[f"OK {n}"] for n in backends},
              "connections": {n: b.connections for n, b in backends.items()},
              "max_pending": {n: b.max_pending for n, b in backends.items()}}
    result["wrong"] = clients * per_client - sum(result["answers"].values())
    rows[row] = result
    excess = unserved(answers, {f"OK {n}": b for n, b in backends.items()})
    if result["wrong"] or excess or errors:
        run.problem(f"slow/{row}: {result['wrong']} answers from neither backend or missing "
                    f"({errors[:1]}); beyond what a backend served: {excess}")


def _proxy(run: Run, stack: ExitStack, scenario: dict[str, Any], how: dict[str, Any],
           backends: dict[str, FakeBackend]) -> int:
    """Start the row's proxy in front of the backends (stopped with the stack): its port."""
    weights = {n: spec.get("weight", 1) for n, spec in scenario["backends"].items()}
    if how["proxy"] == "haproxy":
        servers = [(n, b.port, weights[n], how.get("maxconn", {}).get(n, 0))
                   for n, b in backends.items()]
        return stack.enter_context(owned(HAProxy(run.tmp, servers))).start().port
    args = [x for n, b in backends.items() for x in ("-s", b.spec(weight=weights[n]))]
    daemon = stack.enter_context(owned(Daemon(run.tmp, [
        *args, "--sticky-instance", "no", "--check-interval", "0", *how["args"]])))
    daemon.start()
    return daemon.port


def drive(port: int, clients: int,
          per_client: int) -> tuple[list[float], Counter[str], list[str]]:
    """clients connections opened first, then per_client requests on each, one after the
    other: (seconds each request took, answers by action, errors). A connection that fails
    leaves the rest of its requests unanswered."""
    times: list[float] = []
    answers: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    conns: list[PolicyClient] = []
    go = threading.Barrier(clients)

    def one(k: int, client: PolicyClient) -> None:
        try:
            go.wait(30)
            for n in range(per_client):
                began = time.monotonic()
                action = action_of(client.ask(request(instance=f"s{k}.{n}"), ASK_TIMEOUT))
                took = time.monotonic() - began
                with lock:
                    times.append(took)
                    answers[action] += 1
        except Exception as exc:  # noqa: BLE001 - counted as missing answers, and shown
            with lock:
                errors.append(f"client {k}: {exc!r}")

    try:
        conns += (PolicyClient(HOST, port) for _ in range(clients))
        threads = [threading.Thread(target=one, args=(k, c), daemon=True)
                   for k, c in enumerate(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(ASK_TIMEOUT * 2)
    finally:
        for client in conns:
            client.close()
    return times, answers, errors


def share(result: dict[str, Any], name: str) -> float | None:
    """The share of the requests that backend `name` answered (None: no figures)."""
    if "answers" not in result:
        return None
    total = sum(result["answers"].values())
    return result["answers"][name] / total if total else None


def _checks(run: Run, report: dict[str, Any]) -> None:
    """least-latency gives the slow service less than round robin; a limit of 2 holds."""
    rows = report.get("latency", {}).get("rows", {})
    weighted, least = (share(rows.get(r, {}), "SLOW") for r in ("hapolicy weighted",
                                                                "hapolicy least-latency"))
    if weighted is not None and least is not None and not least < weighted:
        run.problem(f"slow/latency: least-latency gave SLOW {least:.1%}, not less than "
                    f"weighted's {weighted:.1%}")
    limited = report.get("serial", {}).get("rows", {}).get("hapolicy max-inflight 2", {})
    if "max_pending" in limited and limited["max_pending"]["SERIAL"] > 2:
        run.problem(f"slow/serial: SERIAL held {limited['max_pending']['SERIAL']} requests "
                    f"with max-inflight 2")
