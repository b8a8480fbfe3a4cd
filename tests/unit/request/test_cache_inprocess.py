"""The verdict cache on the way of a request (hapolicy.request.cache), in-process: a dispatcher
of ours (testkit.dispatching.Run) before FakeBackend threads on 127.0.0.1.

docs/configuration.md, The verdict cache: a good answer is kept `cache` seconds under its key and
answers the same key meanwhile without a service; when every service failed or is down, a key
with an answer younger than `cache-stale` gets it instead of the default (logged `stale=AGE`);
temporary answers and fail-answer matches are never kept; a masked address shares one entry
across its network; a cached pool does not take the lane.
"""

from __future__ import annotations

import time

import pytest
from testkit.backends import FakeBackend
from testkit.dispatching import Client, Run
from testkit.ports import refused_port
from testkit.protocol import request

from hapolicy.tables.layout import (
    ANSWERS,
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    REQUESTS,
    VERDICT_HITS,
    VERDICT_MISSES,
    VERDICT_STALE,
)

VERDICTS = ("DUNNO", "OK", "REJECT 5.7.23 SPF fail", "PREPEND Received-SPF: pass",
            "550 5.7.1 listed")
CACHED = {"cache": 60.0, "cache_key": "client_address,sender", "sticky_instance": False}


def answer(run: Run, data: bytes) -> bytes:
    """The one answer of one request (no pause after it, unlike Run.ask: a thousand requests)."""
    client = Client()
    found = run.answer(data, client)
    assert len(client.answers) == 1 and run.dispatcher.in_flight == 0
    return found


def keyed(n: int, **attrs) -> bytes:
    """A request of key n (its sender) whose service's verdict is `verdict` (echoed)."""
    return request(sender=f"s{n}@example.org", verdict=VERDICTS[n % len(VERDICTS)],
                   recipient=f"r{attrs.pop('rcpt', 0)}@example.net", **attrs)


def test_a_thousand_requests_of_fifty_keys_ask_the_backend_once_a_key_same_answers(runs):
    with FakeBackend(mode="echo", attr="verdict") as plain, \
            FakeBackend(mode="echo", attr="verdict") as cached_backend:
        uncached = runs(plain.spec("B"), sticky_instance=False)
        cached = runs(cached_backend.spec("B"), **CACHED)
        assert cached.dispatcher.lane is None and uncached.dispatcher.lane is not None
        order = [(i * 7919) % 50 for i in range(1000)]
        for i, key in enumerate(order):
            data = keyed(key, rcpt=i)
            assert answer(cached, data) == answer(uncached, data), (i, key)
        assert len(plain.requests) == 1000
        senders = [r["sender"] for r in cached_backend.requests]
        assert sorted(senders) == sorted({f"s{k}@example.org" for k in range(50)})
        table = cached.dispatcher.cache.table
        assert (table.counter(VERDICT_HITS), table.counter(VERDICT_MISSES)) == (950, 50)
        assert cached.health.counter(REQUESTS) == 1000
        assert cached.health.service_counter(0, ANSWERS) == 50


def test_an_answer_is_asked_again_once_it_is_older_than_cache(runs):
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"), **{**CACHED, "cache": 0.2})
        assert answer(run, keyed(1)) == b"action=OK\n\n"
        assert answer(run, keyed(1)) == b"action=OK\n\n"
        assert len(backend.requests) == 1
        time.sleep(0.25)
        assert answer(run, keyed(1)) == b"action=OK\n\n"
        assert len(backend.requests) == 2


def test_every_service_down_a_kept_key_gets_its_verdict_until_cache_stale_then_the_default(
        runs):
    with FakeBackend(mode="echo", attr="verdict") as backend:
        run = runs(backend.spec("B"), f"C=127.0.0.1:{refused_port()}:20", default_action="DUNNO",
                   **{**CACHED, "cache": 0.1, "cache_stale": 1.0}, log_requests=True)
        assert answer(run, keyed(2)) == b"action=REJECT 5.7.23 SPF fail\n\n"
        backend.stop()
        time.sleep(0.15)  # older than cache: asked again, every service fails
        assert answer(run, keyed(2, rcpt=1)) == b"action=REJECT 5.7.23 SPF fail\n\n"
        assert answer(run, keyed(3)) == b"action=DUNNO\n\n"  # a new key: the default at once
        assert answer(run, keyed(2, rcpt=2)) == b"action=REJECT 5.7.23 SPF fail\n\n"  # all down
        warning = run.log.text("warning")
        assert "no service answered (all services failed): stale=0s action=REJECT 5.7.23 SPF " \
               "fail" in warning, warning
        assert "service=cache stale=0." in run.log.text("info")
        table = run.dispatcher.cache.table
        assert table.counter(VERDICT_STALE) == 2
        assert run.health.counter(DEFAULT_FAILED) + run.health.counter(DEFAULT_DOWN) == 1
        time.sleep(1.0 - 0.15)
        assert answer(run, keyed(2, rcpt=3)) == b"action=DUNNO\n\n"  # too old now: the default
        assert table.counter(VERDICT_STALE) == 2


@pytest.mark.parametrize("verdict", ["DEFER_IF_PERMIT Greylisted", "DEFER try later",
                                     "450 4.7.1 later", "HOLD", "REJECT" + "x" * 300])
def test_temporary_and_other_answers_are_not_kept(runs, verdict):
    with FakeBackend(mode="echo", attr="verdict") as backend:
        run = runs(backend.spec("B"), **CACHED)
        for rcpt in range(3):
            assert answer(run, request(verdict=verdict, rcpt=str(rcpt))) == \
                f"action={verdict}\n\n".encode()
        assert len(backend.requests) == 3


def test_cache_actions_says_which_answers_are_kept(runs):
    with FakeBackend(action="HOLD quarantine") as backend:
        run = runs(backend.spec("B"), **CACHED, cache_actions="HOLD")
        for _ in range(3):
            assert answer(run, request()) == b"action=HOLD quarantine\n\n"
        assert len(backend.requests) == 1


def test_an_answer_that_matches_fail_answer_is_never_kept(runs):
    with FakeBackend(action="REJECT internal error") as bad, FakeBackend(action="OK") as good:
        run = runs(bad.spec("BAD"), good.spec("GOOD", prio=20), **CACHED,
                   fail_answer="internal error")
        for _ in range(3):
            assert answer(run, request()) == b"action=OK\n\n"
        assert len(bad.requests) == 1  # a fail-answer match marks it down
        assert len(good.requests) == 1  # OK kept


def test_a_masked_address_shares_one_entry_across_its_network(runs):
    with FakeBackend(mode="echo", attr="client_address") as backend:
        run = runs(backend.spec("B"), **{**CACHED, "cache_key": "client_address/24"},
                   cache_actions=".*")
        assert answer(run, request(client_address="192.0.2.1")) == b"action=192.0.2.1\n\n"
        for host in range(2, 255, 50):
            assert answer(run, request(client_address=f"192.0.2.{host}")) == \
                b"action=192.0.2.1\n\n"
        assert answer(run, request(client_address="192.0.3.1")) == b"action=192.0.3.1\n\n"
        assert len(backend.requests) == 2


def test_the_protocol_state_is_part_of_the_key(runs):
    with FakeBackend(mode="echo", attr="protocol_state") as backend:
        run = runs(backend.spec("B"), **CACHED, cache_actions=".*")
        assert answer(run, request(protocol_state="RCPT")) == b"action=RCPT\n\n"
        assert answer(run, request(protocol_state="DATA")) == b"action=DATA\n\n"
        assert answer(run, request(protocol_state="RCPT")) == b"action=RCPT\n\n"
        assert len(backend.requests) == 2


def test_an_exception_in_the_cache_costs_that_request_only(runs, monkeypatch):
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"), **CACHED, default_action="DUNNO")
        def broken(*args):
            raise RuntimeError("spoilt")

        monkeypatch.setattr(run.dispatcher.cache.table, "find", broken)
        assert answer(run, request()) == b"action=DUNNO\n\n"
        assert "internal error while answering a request" in run.log.text("warning")
        monkeypatch.undo()
        assert answer(run, request()) == b"action=OK\n\n"
