"""The lane (hapolicy/request/lane.py) gives what the general path gives, request for request.

Each scenario runs twice through a real ClientConnection on a socketpair, the real event loop
and dispatcher, and FakeBackends on 127.0.0.1: once with the lane, once with it turned off
(`make_dispatcher(..., lane=False)`). The answers, the table's counters and health words, the
statistics (but for latencies), the client's sticky instance and what the backends received
must be the same; and the lane must have taken the requests it is for.
"""

from __future__ import annotations

import select
import socket
import time

import pytest
from testkit.backends import FakeBackend
from testkit.logs import ListLogger
from testkit.protocol import request

from hapolicy.backend import exchange as backend_module
from hapolicy.backend.idle import IDLE_SECONDS
from hapolicy.base.eventloop import EVENT_READ, EventLoop
from hapolicy.base.protocol import MAX_ATTRIBUTES
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.request import lane as lane_module
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.client import ClientConnection
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    ADMIN,
    ANSWERS,
    ANSWERS_BY_ACTION,
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    DEFAULT_TIMEOUT,
    DRAIN,
    FAILURES,
    FAILURES_BY_OUTCOME,
    LATENCY_BUCKETS,
    LATENCY_SUM,
    PROBE_UNTIL,
    REQUESTS,
    SERVED,
    SLOT,
    STATS,
    STREAK,
    WEIGHT,
)


class Harness:
    """One client of a dispatcher over a socketpair, the lane on or off."""

    def __init__(self, lane: bool, specs: list[str], log_requests: bool = False,
                 verbose: bool = False, **settings) -> None:
        services = tuple(parse_service(s) for s in specs)
        self.loop = EventLoop()
        self.table = HealthTable(len(services), shared=False)
        self.log = ListLogger()
        self.dispatcher = make_dispatcher(self.loop, PoolConfig(services=services, **settings),
                                          self.table, self.log, log_requests=log_requests,
                                          verbose=verbose, lane=lane)
        ours, self.theirs = socket.socketpair()
        ours.setblocking(False)
        self.theirs.settimeout(0)
        self.client = ClientConnection(self.loop, self.dispatcher, ours.fileno(), ours.fileno(),
                                       lambda _c: None, sock=ours)
        self.client.start()
        self.instances: list[tuple[bytes, int]] = []  # the client's, after each answer
        self.others: list[tuple[ClientConnection, socket.socket]] = []  # add_client's

    def ask(self, data: bytes, answers: int = 1) -> list[bytes]:
        """Send data; the answers it gets (each ends with an empty line)."""
        self.theirs.sendall(data)
        got = b""
        started = time.monotonic()
        while got.count(b"\n\n") < answers:
            assert time.monotonic() - started < 20, f"no answer to {data[:40]!r}: {got!r}"
            self.loop.run_once(0.05)
            try:
                got += self.theirs.recv(65536)
            except BlockingIOError:
                pass
        self.instances.append((self.client.instance, self.client.instance_service))
        return [part + b"\n\n" for part in got.split(b"\n\n")[:-1]]

    def add_client(self) -> socket.socket:
        """Another client of the same dispatcher; its peer's end."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(0)
        client = ClientConnection(self.loop, self.dispatcher, ours.fileno(), ours.fileno(),
                                  lambda _c: None, sock=ours)
        client.start()
        self.others.append((client, theirs))
        return theirs

    def ask_together(self, requests: list[bytes]) -> list[bytes]:
        """Each client (this one, then the others in order) sends its request before the loop
        runs, so that one turn reads them all; the answers, in the clients' order."""
        peers = [self.theirs] + [theirs for _, theirs in self.others]
        for peer, data in zip(peers, requests):
            peer.sendall(data)
        got = [b""] * len(requests)
        started = time.monotonic()
        while any(not g.endswith(b"\n\n") for g in got):
            assert time.monotonic() - started < 20, f"not all answered: {got!r}"
            self.loop.run_once(0.05)
            for n, peer in enumerate(peers[:len(requests)]):
                try:
                    got[n] += peer.recv(65536)
                except BlockingIOError:
                    pass
        return got

    def settle(self, seconds: float = 0.05) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.loop.run_once(0.01)

    def words(self) -> dict[str, object]:
        """What must not tell the lane from the general path."""
        f, table = self.table.f, self.table
        out: dict[str, object] = {
            "requests": f[table.header + REQUESTS],
            "defaults": [f[table.header + w] for w in (DEFAULT_FAILED, DEFAULT_DOWN,
                                                        DEFAULT_TIMEOUT)],
            "instances": self.instances,
            "in_flight": self.dispatcher.in_flight,
        }
        for i in range(table.count):
            base, stats = i * SLOT, table.stats + i * STATS
            out[f"service {i}"] = {
                "answers": f[base + ANSWERS],
                "failures": f[base + FAILURES],
                "down": f[base] != 0.0,
                # the round robin's clock, the operator's weight, the probe and the streak
                "words": [f[base + w] for w in (SERVED, WEIGHT, PROBE_UNTIL, STREAK)],
                "by outcome": [f[stats + FAILURES_BY_OUTCOME + k] for k in range(10)],
                "by action": [f[stats + ANSWERS_BY_ACTION + k] for k in range(8)],
                "timed": sum(f[stats + LATENCY_BUCKETS + k] for k in range(14)),
            }
        return out

    def close(self) -> None:
        for client, theirs in self.others:
            client.close()
            theirs.close()
        self.client.close()
        self.dispatcher.close()
        self.theirs.close()
        self.loop.close()


def counting_takes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    taken: list[bool] = []
    take = lane_module.Lane.take

    def counted(self, client, data, now):
        result = take(self, client, data, now)
        taken.append(result)
        return result

    monkeypatch.setattr(lane_module.Lane, "take", counted)
    return taken


def both(monkeypatch, specs, steps, prios=(10, 20, 30), weights=(None, None, None),
         **settings):
    """Run steps (a function of the harness and the backends) with the lane and without;
    the results, and how many requests the lane took. Services S0, S1, S2 answer OK, SECOND
    and THIRD, with the priorities and weights given."""
    results = []
    taken = counting_takes(monkeypatch)
    for lane in (True, False):
        del taken[:]
        with FakeBackend(action="OK") as first, FakeBackend(action="SECOND") as second, \
                FakeBackend(action="THIRD") as third:
            backends = (first, second, third)
            harness = Harness(lane, [b.spec(f"S{n}", prio=prios[n], weight=weights[n],
                                            timeout=0.5)
                                     for n, b in enumerate(backends[:len(specs)])], **settings)
            try:
                answers = steps(harness, backends)
                harness.settle()
                results.append((answers, harness.words(),
                                [b.raw_requests for b in backends]))
            finally:
                harness.close()
        if lane:
            took = taken.count(True)
    return results, took


def test_answers_counters_and_instances_are_the_general_paths(monkeypatch):
    def steps(h, backends):
        out = []
        for n in range(20):
            out += h.ask(request(instance=f"tx{n // 4}", recipient=f"r{n}@example.org"))
        backends[0].set_mode("extra", action="REJECT no")  # only the action line goes on
        out += h.ask(request(instance="tx9"))
        backends[0].set_mode("multiline", action="REJECT no")  # the first action line
        out += h.ask(request(instance="tx9"))
        backends[0].set_mode("crlf", action="OK crlf")  # its line end is the general path's
        out += h.ask(request(instance="tx9"))
        backends[0].set_mode("answer", action="DEFER_IF_PERMIT later")
        out += h.ask(request(instance="tx9"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0][:2] == [b"action=OK\n\n"] * 2
    assert with_lane[0][20] == b"action=REJECT no\n\n"
    assert took == 23  # every request but the first, which made the connection


def test_answers_read_before_are_taken_as_the_general_path_takes_them(monkeypatch):
    """The lane remembers short whole answers (known_answers): one read again is counted and
    cut to its action line as the first time, a long one is not remembered, the memory is
    bounded, and a read that ends an answer begun in an earlier read is not a known one."""
    monkeypatch.setattr(lane_module, "CACHE_MAX", 4)
    remembered: list[int] = []

    def steps(h, backends):
        out = []
        for _ in range(3):  # each again: from what the lane remembers
            out += h.ask(request())
            backends[0].set_mode("extra", action="REJECT no")
            out += h.ask(request())
            backends[0].set_mode("answer", action="DEFER_IF_PERMIT " + "x" * 60)  # long
            out += h.ask(request())
            backends[0].set_mode("answer", action="OK")
        for n in range(6):  # more short answers than the lane remembers
            backends[0].set_mode("answer", action=f"DUNNO {n}")
            out += h.ask(request())
        # a first line alone, then `action=OK` (known) with the empty line: the first counts
        backends[0].set_mode("split", action="REJECT split")
        out += h.ask(request())
        backends[0].set_mode("answer", action="OK")
        out += h.ask(request())
        if h.dispatcher.lane is not None:
            remembered.append(len(h.dispatcher.lane.known_answers))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0"], steps)
    assert with_lane == without
    answers = with_lane[0]
    assert answers[:3] == [b"action=OK\n\n", b"action=REJECT no\n\n",
                           b"action=DEFER_IF_PERMIT " + b"x" * 60 + b"\n\n"]
    assert answers[3:9] == answers[:3] * 2
    assert answers[-2:] == [b"action=REJECT split\n\n", b"action=OK\n\n"]
    assert remembered == [4]
    assert took == len(answers) - 1


def test_failures_in_the_lane_fail_over_as_the_general_path_does(monkeypatch):
    def steps(h, backends):
        first = backends[0]
        out = h.ask(request(instance="a")) + h.ask(request(instance="a"))
        for mode in ("garbage", "noaction", "partial", "close_after_request", "silent"):
            first.set_mode(mode)
            out += h.ask(request(instance=mode))  # the second service answers
            first.set_mode("answer", action="OK")
            h.table.f[0] = 0.0  # up again for the next round (no checks, no cool-down wait)
            out += h.ask(request(instance="x" + mode))
            out += h.ask(request(instance="x" + mode))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert b"action=SECOND\n\n" in with_lane[0]
    assert took >= 6


def test_a_service_taken_down_or_drained_or_a_sticky_transaction_elsewhere_leaves_the_lane(
        monkeypatch):
    def steps(h, backends):
        f = h.table.f
        out = h.ask(request(instance="t1")) + h.ask(request(instance="t1"))
        f[DRAIN] = 1.0  # drained: the transaction t1 stays, a new one goes to S1
        out += h.ask(request(instance="t1")) + h.ask(request(instance="t2"))
        f[DRAIN] = 0.0
        out += h.ask(request(instance="t2"))  # sticky to S1, which is up
        out += h.ask(request(instance="t3")) + h.ask(request(instance="t3"))
        f[ADMIN] = float("inf")  # disabled
        out += h.ask(request(instance="t3"))
        f[ADMIN] = 0.0
        backends[0].drop_connections()  # the idle connection closed by the service
        h.settle(0.2)
        out += h.ask(request(instance="t4")) + h.ask(request(instance="t4"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n"] * 3 + [b"action=SECOND\n\n"] * 2 + [
        b"action=OK\n\n"] * 2 + [b"action=SECOND\n\n"] + [b"action=OK\n\n"] * 2
    assert took >= 3


def test_what_is_not_one_whole_request_goes_the_general_way(monkeypatch):
    def steps(h, backends):
        out = h.ask(request(instance="a"))
        out += h.ask(request(instance="b") + request(instance="c"), answers=2)  # pipelined
        out += h.ask(request(instance="d").replace(b"\n", b"\r\n"))  # CRLF
        out += h.ask(b"x=1\r\n" + request(instance="e"))  # one CRLF line
        out += h.ask(b"a=" + b"x" * 9000 + b"\n\n")  # a line over the limit: refused
        out += h.ask(b"a=1\n" * (MAX_ATTRIBUTES + 1) + b"\n")  # too many attributes: refused
        out += h.ask(b"a=1\n" * MAX_ATTRIBUTES + b"\n")  # many, but within the limit
        out += h.ask(request(instance="f") + b"\n", answers=2)  # and an empty request
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0][5:7] == [b"action=dunno\n\n"] * 2  # the default action
    assert took == 1  # the last one; the others are the general path's


def test_a_timeout_of_the_total_deadline_in_the_lane_is_the_general_paths(monkeypatch):
    def steps(h, backends):
        out = h.ask(request(instance="a"))
        backends[0].set_mode("answer", delay=1.0, action="LATE")
        out += h.ask(request(instance="b"))  # 0.5 s per service, total 0.6 s: default
        return out

    (with_lane, without), took = both(monkeypatch, ["S0"], steps, total_timeout=0.6)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n", b"action=dunno\n\n"]
    assert took == 1


def test_a_slow_handler_before_the_request_in_its_turn_leaves_it_its_whole_timeout(monkeypatch):
    # another descriptor's handler blocks first in the same turn (a getaddrinfo, say) for
    # longer than the service's timeout: the attempt starts when the request is read, so the
    # answer still comes in time and no failure is counted against the service
    def steps(h, backends):
        out = h.ask(request(instance="a"))  # the pooled connection is made
        backends[0].set_mode("answer", delay=0.05, action="OK")
        stalled, waker = socket.socketpair()
        stalled.setblocking(False)
        h.loop.add(stalled, EVENT_READ, lambda mask: (stalled.recv(16), time.sleep(0.6)))
        waker.send(b"x")  # ready before the request: its handler runs first in the turn
        try:
            out += h.ask(request(instance="b"))
        finally:
            h.loop.remove(stalled)
            stalled.close()
            waker.close()
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n"] * 2
    assert with_lane[1]["service 0"]["failures"] == 0
    assert took == 1


def test_pools_the_lane_is_not_for():
    for settings in ({"balance": "hash:sender"}, {"log_requests": True}, {"verbose": True},
                     {"fail_answer": "^defer"}, {"hedge": "0.1"}):
        harness = Harness(True, ["S0=127.0.0.1:1"], **_settings(settings))
        try:
            assert harness.dispatcher.lane is None, settings
        finally:
            harness.close()
    two = Harness(True, ["A=127.0.0.1:1", "B=127.0.0.1:2"])  # round robin: the lane picks
    try:
        assert two.dispatcher.lane is not None
    finally:
        two.close()


def _settings(settings: dict) -> dict:
    from hapolicy.config.parsers import parse_balance, parse_fail_answer, parse_hedge

    parsers = {"balance": parse_balance, "fail_answer": parse_fail_answer,
               "hedge": parse_hedge}
    return {k: parsers[k](v) if k in parsers else v for k, v in settings.items()}


def test_a_lane_request_waiting_on_a_service_taken_down_elsewhere_is_released(monkeypatch):
    def steps(h, backends):
        out = h.ask(request(instance="a"))
        backends[0].set_mode("silent")
        h.theirs.sendall(request(instance="b"))
        h.settle(0.05)  # sent, waiting on S0
        started = time.monotonic()
        h.table.record_failure(0, started, 60.0, 60.0)  # another process takes S0 down
        out += h.ask(b"")
        released = time.monotonic() - started
        assert released < 0.45, released  # by the sweep, not by its own 0.5 s timeout
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n", b"action=SECOND\n\n"]
    assert took == 1


def test_a_balanced_group_is_picked_in_the_general_paths_order(monkeypatch):
    def steps(h, backends):
        out = []
        for n in range(24):  # a transaction every three requests, some with no instance
            instance = f"tx{n // 3}" if n % 8 else ""
            out += h.ask(request(instance=instance, recipient=f"r{n}@example.org"))
        h.table.f[WEIGHT] = 4.0  # the operator's weight for S0, at once
        for n in range(12):
            out += h.ask(request(instance=f"ty{n // 2}"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1", "S2"], steps,
                                      prios=(10, 10, 20), weights=(1, 2, 1))
    assert with_lane == without
    answers = with_lane[0]
    assert b"action=OK\n\n" in answers and b"action=SECOND\n\n" in answers
    assert b"action=THIRD\n\n" not in answers  # the backup of the group is not asked
    assert took >= 30  # all but the first of each service's connections


def test_a_balanced_member_failing_down_or_drained_is_the_general_paths(monkeypatch):
    def steps(h, backends):
        f = h.table.f
        out = []
        for n in range(4):
            out += h.ask(request(instance=f"a{n}"))
        backends[0].set_mode("close_after_request")  # S0's exchanges fail over to S1
        for n in range(4):
            out += h.ask(request(instance=f"b{n}"))
        backends[0].set_mode("answer", action="OK")
        f[0] = 0.0  # S0 up again
        backends[1].set_mode("close_after_request")  # S1's fail over to S0, not to S2
        f[SERVED] = f[SLOT + SERVED] + 1.0  # S0's clock ahead: S1 is the next pick
        for n in range(3):
            out += h.ask(request(instance=f"s{n}"))
        backends[1].set_mode("answer", action="SECOND")
        f[SLOT] = 0.0
        for word, value in ((DRAIN, 1.0), (ADMIN, float("inf"))):
            for n in range(4):  # S1 asked again: an idle connection to it waits in the pool
                out += h.ask(request(instance=f"c{word}{n}"))
            f[SERVED] = f[SLOT + SERVED] + 1.0  # S1 would be the next pick
            f[SLOT + word] = value  # drained, then disabled: S0 alone answers
            for n in range(3):
                out += h.ask(request(instance=f"d{word}{n}"))
            f[SLOT + word] = 0.0
        f[0] = time.monotonic() + 60.0  # S0 down: S1 alone, then S2 for a sticky one
        out += h.ask(request(instance="e")) + h.ask(request(instance="e"))
        f[0] = 0.0
        for n in range(4):
            out += h.ask(request(instance=f"f{n}"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1", "S2"], steps,
                                      prios=(10, 10, 20))
    assert with_lane == without
    assert took >= 4


def test_a_transaction_sticky_to_the_backup_stays_there_when_the_group_is_back(monkeypatch):
    def steps(h, backends):
        f = h.table.f
        out = h.ask(request(instance="warm")) + h.ask(request(instance="warm2"))
        f[0] = f[SLOT] = time.monotonic() + 60.0  # the group down: S2 answers
        out += h.ask(request(instance="t")) + h.ask(request(instance="t"))
        f[0] = f[SLOT] = 0.0  # the group back: t stays on S2, a new transaction takes the lane
        out += h.ask(request(instance="t")) + h.ask(request(instance="u"))
        out += h.ask(request(instance="u")) + h.ask(request(instance="t"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1", "S2"], steps,
                                      prios=(10, 10, 20))
    assert with_lane == without
    assert with_lane[0][2:5] == [b"action=THIRD\n\n"] * 3
    assert b"action=THIRD\n\n" not in with_lane[0][5:]  # u, and t after u: one client keeps
    # the instance of its last answer only


def test_an_answer_from_a_member_marked_down_meanwhile_brings_it_back(monkeypatch):
    def steps(h, backends):
        f = h.table.f
        out = []
        for n in range(4):  # both members connected, both idle in the pool
            out += h.ask(request(instance=f"w{n}"))
        counts = [len(b.raw_requests) for b in backends]
        h.theirs.sendall(request(instance="x"))
        while not h.dispatcher.backends.in_flight:  # the client's read, and the request sent
            h.loop.run_once(0.05)
        [conn] = h.dispatcher.backends.in_flight
        assert select.select([conn.sock], [], [], 10)[0]  # the answer waits there, unread
        asked = next(k for k, b in enumerate(backends) if len(b.raw_requests) > counts[k])
        f[asked * SLOT] = time.monotonic() + 60.0  # down, as another process saw it
        out += h.ask(b"")
        out.append(f"asked S{asked}, down after: {f[asked * SLOT] != 0.0}".encode())
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps, prios=(10, 10),
                                      weights=(1, 3))
    assert with_lane == without
    assert with_lane[0][-1] == b"asked S1, down after: False"  # Health.ok brought S1 back
    assert took >= 1


def test_an_idle_connection_past_its_time_is_not_the_lanes(monkeypatch):
    def steps(h, backends):
        out = h.ask(request(instance="a")) + h.ask(request(instance="b"))
        for stack in h.dispatcher.backends.idle.stacks.values():
            for conn in stack:
                conn.ended -= IDLE_SECONDS  # idle for a minute: closed, a new one made
        out += h.ask(request(instance="c")) + h.ask(request(instance="d"))
        return out + [f"connections {backends[0].connections}".encode()]

    (with_lane, without), took = both(monkeypatch, ["S0"], steps)
    assert with_lane == without
    assert with_lane[0][-1] == b"connections 2"
    assert took == 2


def test_requests_read_in_one_turn_go_out_at_its_end_as_the_general_path_sends_them(
        monkeypatch):
    """Four clients' requests read in one turn: the lane sends them when the turn's handlers
    have all run, and writes the answers read in one turn at its end (Lane.flush); each
    client gets what the general path gives it, and the counters are the same."""
    flushed: list[int] = []
    flush = lane_module.Lane.flush

    def counted(self):
        flushed.append(len(self.sends) + len(self.answered))
        flush(self)

    monkeypatch.setattr(lane_module.Lane, "flush", counted)

    def steps(h, backends):
        for _ in range(3):
            h.add_client()
        out = []
        for n in range(6):  # the first round makes the connections, the others take the lane
            out += h.ask_together([request(instance=f"tx{n}.{c}", recipient=f"r{c}@example.org")
                                   for c in range(4)])
        backends[0].set_mode("answer", action="REJECT busy")
        out += h.ask_together([request(instance=f"ty.{c}") for c in range(4)])
        return out + [f"connections {backends[0].connections}".encode()]

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    # the answers and counters are the general path's; the services' requests too, but the
    # order in which requests on four connections reach a service is the kernel's
    assert with_lane[:2] == without[:2]
    assert [sorted(r) for r in with_lane[2]] == [sorted(r) for r in without[2]]
    assert with_lane[0][:24] == [b"action=OK\n\n"] * 24
    assert with_lane[0][24:28] == [b"action=REJECT busy\n\n"] * 4
    assert with_lane[0][-1] == b"connections 4"
    assert took >= 24
    assert max(flushed) >= 2  # a turn's requests, or answers, went out together


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "general"])
def test_each_answer_is_counted_in_the_table_before_it_is_written(monkeypatch, lane):
    """What reads the table (the control socket, /metrics) never sees an answer a client has
    and the table has not counted, nor its request: the lane adds a turn's counts at once
    before it writes the turn's answers (Lane.add_counts), as the general path counts each
    before its write."""
    seen: list[tuple[float, float, float, float]] = []
    deliver = ClientConnection.deliver

    def counted(self, answer):
        f, table = harness.table.f, harness.table
        stats = table.stats
        seen.append((f[table.header + REQUESTS], f[ANSWERS] + f[SLOT + ANSWERS],
                     f[stats + LATENCY_SUM] + f[stats + STATS + LATENCY_SUM],
                     sum(f[stats + n * STATS + LATENCY_BUCKETS + k] for n in (0, 1)
                         for k in range(14))))
        deliver(self, answer)

    monkeypatch.setattr(ClientConnection, "deliver", counted)
    with FakeBackend(action="OK") as first, FakeBackend(action="SECOND") as second:
        harness = Harness(lane, [first.spec("S0", timeout=0.5), second.spec("S1", timeout=0.5)])
        try:
            for _ in range(3):
                harness.add_client()
            for n in range(5):  # turns of several events: the lane gathers
                harness.ask_together([request(instance=f"tx{n}.{c}") for c in range(4)])
            harness.ask(request(instance="one"))  # and one of a turn of one event
        finally:
            harness.close()
    assert len(seen) == 21
    for written, (requests, answers, latency, timed) in enumerate(seen, 1):
        assert requests >= written and answers >= written and timed >= written
        assert latency > 0.0


def test_a_pipelining_clients_answers_keep_their_order_when_one_waits_for_the_turn_end(
        monkeypatch):
    """The answer to a request and the client's next request read in one turn: the answer
    waits for the turn's end with the client still busy, so the next one (refused at once
    here, as too large) is answered after it, as on the general path."""
    def steps(h, backends):
        out = h.ask(request(instance="a"))
        backends[0].set_mode("answer", delay=0.2, action="OK later")
        h.theirs.sendall(request(instance="b"))
        h.settle(0.05)  # sent; its answer comes in 0.2 s
        time.sleep(0.3)  # the answer waits unread
        h.theirs.sendall(b"a=" + b"x" * 9000 + b"\n\n")  # and so does the next request
        out += h.ask(b"", answers=2)
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n", b"action=OK later\n\n", b"action=dunno\n\n"]
    assert took == 1


def test_a_pooled_connection_the_service_closed_meets_a_request_in_the_same_turn(monkeypatch):
    """The service closes the idle connection and a request comes in one turn: whichever
    is read first, the request is answered on a fresh connection and nothing counts against
    the service, as on the general path."""
    def steps(h, backends):
        out = h.ask(request(instance="a")) + h.ask(request(instance="b"))
        for n in range(3):
            backends[0].drop_connections()
            time.sleep(0.1)  # its end of file waits unread
            out += h.ask(request(instance=f"c{n}"))
        return out

    (with_lane, without), took = both(monkeypatch, ["S0", "S1"], steps)
    assert with_lane == without
    assert with_lane[0] == [b"action=OK\n\n"] * 5
    assert with_lane[1]["service 0"]["failures"] == 0
    assert took >= 1  # the second request's at least


def test_a_queued_request_whose_exchange_ends_before_the_turn_end_is_not_sent():
    """Taken in a turn of several events (QUEUED), then released in the same turn (its
    service found down meanwhile): the general path fails it over, and the turn's end sends
    nothing on the released connection."""
    with FakeBackend(action="OK") as first, FakeBackend(action="SECOND") as second:
        h = Harness(True, [first.spec("S0", prio=10, timeout=0.5),
                           second.spec("S1", prio=20, timeout=0.5)])
        try:
            assert h.ask(request(instance="a")) == [b"action=OK\n\n"]
            h.theirs.sendall(request(instance="b"))
            select.select([h.client.rfd], [], [], 5.0)
            h.loop.gathering = True  # as run_once has it in a turn of several events
            h.client._on_readable(EVENT_READ)
            (conn,) = h.dispatcher.backends.in_flight
            assert conn.state == backend_module.QUEUED and conn.client is h.client
            conn._on_event(EVENT_READ)  # an event of it in the same turn waits for the send
            assert conn.state == backend_module.QUEUED
            h.dispatcher.release(0, time.monotonic() + 1.0, "taken down meanwhile")
            h.loop.gathering = False
            assert h.ask(b"") == [b"action=SECOND\n\n"]
            assert first.raw_requests == [request(instance="a")]
            assert h.dispatcher.in_flight == 0 and not h.client.busy
        finally:
            h.close()
