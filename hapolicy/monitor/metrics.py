"""Prometheus metrics at --metrics-listen HOST:PORT: `GET /metrics`, served in the monitor's loop.

The master binds the address at start (daemon/monitorsockets.py: `bind_metrics`), so a bad
address or a port in use is a one-line error then; it keeps the socket and the monitor
(daemon/monitor.py) serves it, as --user. `preload` imports prometheus_client in the master
before the fork: after the privilege drop its files may not be readable (a Python under
/root). `MetricsServer` takes that socket, an event loop and a function giving the shared
tables (`Tables`), and answers one request per connection (the connection handling is
oneshot.py's, shared with the control socket: at most MAX_CONNECTIONS at once, a new one
taking the place of the oldest without a whole head, a request head of at most MAX_HEAD bytes
within HEAD_SECONDS, the client's remaining input read and dropped after the answer).
`GET /metrics` (a query string is ignored) gets the exposition, `GET /` and `GET /status` the
status page (statuspage.py); another path 404, another method 405, a head that is not HTTP
400, a longer one 431, a slow one 408.

The exposition is prometheus_client's (`generate_latest`) of `Collector`, which reads the tables at
each scrape: nothing is kept between scrapes, nothing is written to the tables, and
prometheus_client is imported only by a daemon that serves metrics. Names and meanings are in
docs/operating.md (Prometheus metrics); labels are only pool, service, outcome, action and reason
(and hapolicy_build_info's version and python), never anything of a request.
"""

from __future__ import annotations

import socket
import sys
import time

from hapolicy import __version__
from hapolicy.monitor import cachecounts, statuspage
from hapolicy.monitor.oneshot import HEAD_SECONDS, OneShotServer
from hapolicy.tables.layout import (
    ACTIONS,
    BOUNDS,
    DEFAULT_REASONS,
    HEDGE_WON,
    HEDGED,
    LAST_CHANGE,
    LATENCY_SUM,
    REQUESTS,
    SHADOW_COUNTERS,
    SHADOW_RESULTS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Callable

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.tables.health import HealthTable
    from hapolicy.tables.workertable import WorkerTable

MAX_HEAD = 8192


class Tables:
    """What a scrape reads: the running configuration, each pool's health table, the worker
    table and the slots of the workers alive."""

    __slots__ = ("config", "health", "slots", "workers")

    def __init__(self, config: DaemonConfig, health: Mapping[str, HealthTable],
                 workers: WorkerTable, slots: Sequence[int]) -> None:
        self.config = config
        self.health = health
        self.workers = workers
        self.slots = slots


def preload() -> None:
    """Import now what serving a scrape imports (see the module doc)."""
    import prometheus_client.core
    import prometheus_client.exposition  # noqa: F401

    from hapolicy.base import outcome  # noqa: F401
    from hapolicy.tables import load, stats  # noqa: F401


class Collector:
    """prometheus_client's custom collector over the shared tables."""

    def __init__(self, tables: Callable[[], Tables]) -> None:
        self.tables = tables

    def collect(self) -> Iterator[object]:
        import time

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t = self.tables()
        info = GaugeMetricFamily("hapolicy_build_info", "hapolicy's version (value 1)",
                                 labels=["version", "python"])
        info.add_metric([__version__, sys.version.split()[0]], 1.0)
        yield info
        yield GaugeMetricFamily("hapolicy_workers", "worker processes alive", len(t.slots))
        yield CounterMetricFamily("hapolicy_worker_restarts", "workers that died unasked "
                                  "(crashed, killed, stuck) and were replaced",
                                  t.workers.restarts())
        yield GaugeMetricFamily("hapolicy_client_connections", "client connections the "
                                "workers hold", sum(t.workers.clients(s) for s in t.slots))
        pools = [(p, t.health[p.name]) for p in t.config.pools if p.name in t.health]
        yield from pool_families(pools, t.slots)
        if any(table.verdicts is not None for _, table in pools):
            yield from cachecounts.families(pools)
        yield from service_families(pools, time.monotonic(), time.time())


def pool_families(pools: list[tuple[PoolConfig, HealthTable]],
                  slots: Sequence[int]) -> Iterator[object]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    requests = CounterMetricFamily("hapolicy_requests", "requests sent on their way to a "
                                   "pool's services", labels=["pool"])
    defaults = CounterMetricFamily("hapolicy_default_answers", "requests answered with the "
                                   "default action, by reason", labels=["pool", "reason"])
    in_flight = GaugeMetricFamily("hapolicy_requests_in_flight", "requests not answered yet, "
                                  "as of each worker's last second", labels=["pool"])
    for pool, table in pools:
        requests.add_metric([pool.name], table.counter(REQUESTS))
        for reason, word in DEFAULT_REASONS:
            defaults.add_metric([pool.name, reason], table.counter(word))
        in_flight.add_metric([pool.name], table.requests_in_flight(slots))
    yield from (requests, defaults, in_flight)
    yield from feature_families(pools)


def feature_families(pools: list[tuple[PoolConfig, HealthTable]]) -> Iterator[object]:
    """Of the pools that have a shadow (shadow.py) or hedge (hedge.py) only."""
    from prometheus_client.core import CounterMetricFamily

    shadow = CounterMetricFamily("hapolicy_shadow", "copies of the pool's answered requests "
                                 "sent to its shadow, by result", labels=["pool", "result"])
    hedges = CounterMetricFamily("hapolicy_hedges", "requests for which a hedge asked a "
                                 "second service", labels=["pool"])
    won = CounterMetricFamily("hapolicy_hedges_won", "hedged requests answered by the "
                              "hedge's service", labels=["pool"])
    for pool, table in pools:
        if pool.shadow:
            for word in SHADOW_COUNTERS:
                shadow.add_metric([pool.name, SHADOW_RESULTS[word]], table.counter(word))
        if pool.hedge:
            hedges.add_metric([pool.name], table.counter(HEDGED))
            won.add_metric([pool.name], table.counter(HEDGE_WON))
    yield from (shadow, hedges, won)
    yield from load_families(pools)


def load_families(pools: list[tuple[PoolConfig, HealthTable]]) -> Iterator[object]:
    """Of the pools with least-latency (the answer time) or max-inflight (load.py)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from hapolicy.tables.health import whole
    from hapolicy.tables.layout import TURNED_AWAY
    from hapolicy.tables.load import ServiceLoad, ewma
    from hapolicy.tables.stats import word

    labels = ["pool", "service"]
    answer_time = GaugeMetricFamily("hapolicy_service_answer_time_ewma_seconds", "a "
                                    "least-latency pool's peak-EWMA answer time of the "
                                    "service", labels=labels)
    in_flight = GaugeMetricFamily("hapolicy_service_requests_in_flight", "requests waiting "
                                  "for the service's answer, now", labels=labels)
    queued = GaugeMetricFamily("hapolicy_service_requests_queued", "requests waiting for a "
                               "free slot of the service (max-inflight), now", labels=labels)
    turned = CounterMetricFamily("hapolicy_service_turned_away", "requests the service's "
                                 "max-inflight sent elsewhere or let wait in vain",
                                 labels=labels)
    now = time.monotonic()
    for pool, table in pools:
        if pool.balance != "least-latency" and not pool.max_inflight:
            continue
        load = ServiceLoad(table)
        for i, service in enumerate(pool.services):
            names = [pool.name, service.name]
            seconds = ewma(table, i, now) if pool.balance == "least-latency" else None
            if seconds is not None:
                answer_time.add_metric(names, seconds)
            in_flight.add_metric(names, load.in_flight(i))
            queued.add_metric(names, load.queued(i))
            turned.add_metric(names, whole(word(table, i, TURNED_AWAY)))
    yield from (answer_time, in_flight, queued, turned)


def service_families(pools: list[tuple[PoolConfig, HealthTable]], now: float,
                     wall: float) -> Iterator[object]:
    """Per service: its answers and failures, then its state (now: the monotonic time, wall
    the time of day)."""
    yield from answer_families(pools)
    yield from state_families(pools, now, wall)


def answer_families(pools: list[tuple[PoolConfig, HealthTable]]) -> Iterator[object]:
    """Each service's good answers by action and their latency, its failures by outcome."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    from hapolicy.base.outcome import NAMES
    from hapolicy.tables.stats import answers_by_action, buckets, failures_by_outcome, word

    labels = ["pool", "service"]
    answers = CounterMetricFamily("hapolicy_service_answers", "good answers of a service, by "
                                  "the first word of their action", labels=[*labels, "action"])
    failures = CounterMetricFamily("hapolicy_service_failures", "live requests' failures "
                                   "that counted against a service, by outcome",
                                   labels=[*labels, "outcome"])
    latency = HistogramMetricFamily("hapolicy_service_latency_seconds", "time from sending a "
                                    "request to a service to its good answer", labels=labels)
    bounds = [f"{b:g}" for b in BOUNDS] + ["+Inf"]
    for pool, table in pools:
        for i, service in enumerate(pool.services):
            names = [pool.name, service.name]
            for action, count in zip(ACTIONS, answers_by_action(table, i)):
                answers.add_metric([*names, action], count)
            for outcome, count in failures_by_outcome(table, i).items():
                failures.add_metric([*names, NAMES[outcome].replace(" ", "_")], count)
            cumulative, total = [], 0
            for bound, count in zip(bounds, buckets(table, i)):
                total += count
                cumulative.append((bound, total))
            latency.add_metric(names, cumulative, word(table, i, LATENCY_SUM))
    yield from (answers, failures, latency)


def state_families(pools: list[tuple[PoolConfig, HealthTable]], now: float,
                   wall: float) -> Iterator[object]:
    """Each service's health, admin state, weight, last change and time down."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from hapolicy.tables.stats import down_seconds, is_up, word

    labels = ["pool", "service"]
    up = GaugeMetricFamily("hapolicy_service_up", "1 when the service is up by its health, "
                           "0 when down (until a check or a probe brings it back)",
                           labels=labels)
    disabled = GaugeMetricFamily("hapolicy_service_disabled", "1 when the operator disabled "
                                 "the service (hapolicyctl disable)", labels=labels)
    draining = GaugeMetricFamily("hapolicy_service_draining", "1 when the operator drains "
                                 "the service (hapolicyctl drain)", labels=labels)
    weight = GaugeMetricFamily("hapolicy_service_weight", "the weight selection uses (the "
                               "operator's, else the configured one)", labels=labels)
    change = GaugeMetricFamily("hapolicy_service_last_change_timestamp_seconds", "when the "
                               "service last went down or came back (or its table was made)",
                               labels=labels)
    down = CounterMetricFamily("hapolicy_service_down_seconds", "seconds the service has "
                               "been down in all", labels=labels)
    for pool, table in pools:
        for i, service in enumerate(pool.services):
            names = [pool.name, service.name]
            up.add_metric(names, 1.0 if is_up(table, i) else 0.0)
            disabled.add_metric(names, 1.0 if table.disabled(i) else 0.0)
            draining.add_metric(names, 1.0 if table.draining(i) else 0.0)
            weight.add_metric(names, table.weight(i, service.weight))
            change.add_metric(names, word(table, i, LAST_CHANGE) or wall)
            down.add_metric(names, down_seconds(table, i, now))
    yield from (up, disabled, draining, weight, change, down)


class MetricsServer(OneShotServer):
    """Serves GET /metrics on a listening socket in `loop` (see the module doc)."""

    what = "metrics"
    max_request = MAX_HEAD

    def __init__(self, sock: socket.socket, loop: EventLoop, tables: Callable[[], Tables],
                 log: Logger) -> None:
        from prometheus_client import CollectorRegistry, exposition

        self.tables = tables
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(tables))
        self.generate = exposition.generate_latest
        self.content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4",
                                    exposition.CONTENT_TYPE_LATEST)
        super().__init__(sock, loop, log)

    def answer(self, data: bytes) -> bytes | None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")
        if end < 0 or end > MAX_HEAD:
            return None
        line = data[:end].split(b"\n", 1)[0].strip().split()
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            return http(400, "Bad Request", b"not an HTTP/1 request\n")
        path = line[1].split(b"?", 1)[0]
        if path != b"/metrics" and path not in statuspage.PATHS:
            return http(404, "Not Found", b"only /metrics, / and /status are served here\n")
        if line[0] != b"GET":
            return http(405, "Method Not Allowed", b"only GET\n", b"Allow: GET\r\n")
        if path != b"/metrics":
            return self.status_page()
        try:
            body = self.generate(self.registry)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the monitor
            self.log.error(f"metrics: cannot make the exposition: {exc!r}")
            return http(500, "Internal Server Error", b"internal error\n")
        return http(200, "OK", body, f"Content-Type: {self.content_type}\r\n".encode())

    def status_page(self) -> bytes:
        """GET / and /status: statuspage.py's page."""
        try:
            t = self.tables()
            body = statuspage.page(t.config, t.health, time.monotonic(), time.time())
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the monitor
            self.log.error(f"metrics: cannot make the status page: {exc!r}")
            return http(500, "Internal Server Error", b"internal error\n")
        return http(200, "OK", body, b"Content-Type: text/html; charset=utf-8\r\n"
                    b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                    b"Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n")

    def too_long(self) -> bytes:
        return http(431, "Request Header Fields Too Large",
                    f"a request head of at most {MAX_HEAD} bytes\n".encode())

    def too_slow(self) -> bytes:
        return http(408, "Request Timeout", f"no request within {HEAD_SECONDS:g}s\n".encode())


def http(code: int, why: str, body: bytes, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    if not extra.startswith(b"Content-Type:"):
        extra += b"Content-Type: text/plain; charset=utf-8\r\n"
    return (f"HTTP/1.1 {code} {why}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n").encode() + extra + b"\r\n" + body
