"""The counters of the health table (health.py) and the master's summary line (summary.py).

In process: a Dispatcher against FakeBackend on 127.0.0.1 (as test_dispatch_inprocess.py)
moves each service's answers and failures and the pool's requests and default answers, with
answers + defaults == requests once nothing is in flight; a reload's carry_over keeps them.
A daemon with `--summary 1` logs one summary line per pool whose counts match what the fake
backends saw.
"""

from __future__ import annotations

import re

from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.dispatching import Run
from testkit.ports import HOST, refused_port
from testkit.protocol import PolicyClient, request

from hapolicy.base.protocol import Request
from hapolicy.config.records import parse_service
from hapolicy.daemon.summary import pool_line
from hapolicy.tables.health import HealthTable, carry_over
from hapolicy.tables.layout import (
    ANSWERS,
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    DEFAULT_REFUSED,
    DEFAULT_TIMEOUT,
    FAILURES,
    REQUESTS,
    SLOT,
)

DEFAULTS = (DEFAULT_FAILED, DEFAULT_DOWN, DEFAULT_TIMEOUT, DEFAULT_REFUSED)


def counts(table: HealthTable) -> dict[str, object]:
    return {
        "requests": table.counter(REQUESTS),
        "defaults": [table.counter(w) for w in DEFAULTS],
        "answers": [table.service_counter(i, ANSWERS) for i in range(table.count)],
        "failures": [table.service_counter(i, FAILURES) for i in range(table.count)],
    }


def balanced(table: HealthTable) -> bool:
    c = counts(table)
    return c["requests"] == sum(c["answers"]) + sum(c["defaults"])


def test_answers_and_failures_are_counted():
    with FakeBackend(action="OK") as good:
        run = Run(f"DEAD=127.0.0.1:{refused_port()}:10", good.spec("GOOD", prio=20))
        try:
            for _ in range(3):
                assert run.ask(request())[0] == b"action=OK\n\n"
            # refused before any service is asked: a request, and a default answer
            run.dispatcher.submit(Request(b"", "too large"), _Sink())
        finally:
            run.close()
    # DEAD failed once, then was skipped while down
    assert counts(run.health) == {"requests": 4, "defaults": [0, 0, 0, 1], "answers": [0, 3],
                                  "failures": [1, 0]}
    assert len(good.requests) == 3


def test_default_answers_are_counted_by_reason():
    run = Run(f"A=127.0.0.1:{refused_port()}", f"B=127.0.0.1:{refused_port()}:20",
              all_down="default")
    try:
        for _ in range(3):
            assert run.ask(request())[0] == b"action=dunno\n\n"
        table = run.health
        c = counts(table)
        assert c["requests"] == 3 and c["answers"] == [0, 0]
        assert c["failures"] == [1, 1]  # tried once each, then down
        assert c["defaults"] == [1, 2, 0, 0]  # all failed, then all down
        assert balanced(table)
        line = pool_line("default", table, ["A", "B"], 1.5, 0.0)
        assert line == ("summary pool=default requests=3 rate=1.5/s defaults=3 (failed=1 down=2 "
                        "timeout=0 refused=0 internal=0) services: A down answers=0 failures=1, B down answers=0 "
                        "failures=1")
    finally:
        run.close()


def test_total_timeout_default_is_counted():
    with FakeBackend(mode="silent") as mute:
        run = Run(mute.spec("MUTE", timeout=30), total_timeout=0.2)
        try:
            assert run.ask(request())[0] == b"action=dunno\n\n"
        finally:
            run.close()
    assert counts(run.health)["defaults"] == [0, 0, 1, 0]
    assert balanced(run.health)


def test_carry_over_keeps_the_counters():
    before = tuple(parse_service(s) for s in ("A=127.0.0.1:1", "B=127.0.0.1:2"))
    after = tuple(parse_service(s) for s in ("C=127.0.0.1:3", "B=127.0.0.1:2"))
    old = HealthTable(2, shared=False)
    old.f[1 * SLOT + ANSWERS] = 7.0
    old.f[1 * SLOT + FAILURES] = 2.0
    old.f[0 * SLOT + ANSWERS] = 5.0
    old.f[old.header + REQUESTS] = 13.0
    old.f[old.header + DEFAULT_DOWN] = 1.0
    new = carry_over(old, before, after)
    assert counts(new) == {"requests": 13, "defaults": [0, 1, 0, 0], "answers": [0, 7],
                           "failures": [0, 2]}
    old.close()
    new.close()


class _Sink:
    instance = b""
    instance_service = -1

    def deliver(self, answer: bytes) -> None:
        pass


SUMMARY = re.compile(r"summary pool=(\S+) requests=(\d+) rate=([\d.]+)/s defaults=(\d+) "
                     r"\(failed=(\d+) down=(\d+) timeout=(\d+) refused=(\d+) internal=(\d+)\) "
                     r"services: (.*)$")


def test_the_daemon_logs_a_summary_line_that_adds_up():
    with FakeBackend(action="OK one", name="S1") as s1, \
            FakeBackend(action="OK two", name="S2") as s2, \
            Daemon("-s", s1.spec("S1"), "-s", s2.spec("S2"), "-s",
                   f"DEAD=127.0.0.1:{refused_port()}:20", "--summary", "1",
                   workers=2) as daemon:
        with PolicyClient(HOST, daemon.port) as client:
            for i in range(40):
                assert client.ask(request(recipient=f"r{i}@example.net")).startswith("action=OK")
        lines = daemon.log.wait_for(
            lambda lines: any("summary pool=default requests=40 " in x for x in lines),
            timeout=5)
        summary = [x for x in lines if "summary pool=default requests=40 " in x][-1]
        match = SUMMARY.search(summary)
        assert match, summary
        assert match.group(4) == "0"
        services = {name: (int(a), int(f)) for name, a, f in
                    re.findall(r"(\w+) (?:up|down) answers=(\d+) failures=(\d+)",
                               match.group(10))}
        assert services == {"S1": (len(s1.live_requests), 0), "S2": (len(s2.live_requests), 0),
                            "DEAD": (0, 0)}, summary
        assert len(s1.live_requests) + len(s2.live_requests) == 40
        assert daemon.stop() == 0
