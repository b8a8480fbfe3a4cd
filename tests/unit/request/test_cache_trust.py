"""What the verdict cache gives back can be trusted (request/cache.py, tables/verdicts.py): a
slot that is whole but holds no single answer is a miss, and so is one whose time is NaN or
in the future."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.backends import FakeBackend
from testkit.dispatching import Client, Run
from testkit.protocol import request

from hapolicy.base.protocol import RequestFramer
from hapolicy.tables.layout import VERDICT_ANSWER
from hapolicy.tables.verdicts import VerdictTable

CACHED = {"cache": 60.0, "cache_key": "client_address,sender", "sticky_instance": False}


@pytest.fixture
def runs():
    made: list[Run] = []

    def make(*specs: str, **settings) -> Run:
        made.append(Run(*specs, **settings))
        return made[-1]

    yield make
    for run in made:
        run.close()


def answer(run: Run, data: bytes) -> bytes:
    client = Client()
    [framed] = RequestFramer().feed(data)
    run.dispatcher.submit(framed, client)
    started = time.monotonic()
    while not client.answers:
        assert time.monotonic() - started < 20, "never answered"
        run.loop.run_once(0.05)
    return client.answers[0]


@pytest.mark.parametrize("bad", [b"", b"action=OK\n\naction=REJECT two answers\n\n",
                                 b"action=OK", b"not an action\n\n", b"action=OK\x00\n\n",
                                 b"action=OK\nmore\n\n"])
def test_a_whole_slot_that_holds_no_single_answer_is_a_miss(runs, bad):
    """A slot whose CRC matches (whole) but whose bytes are not one `action=` line and the
    empty line without a NUL (written so by any process that maps the table) is a miss: the
    request goes to the service, and Postfix gets one answer it can read."""
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("B"), **CACHED)
        [framed] = RequestFramer().feed(request())
        cache = run.dispatcher.cache
        cache.table.store(cache.key(framed), bad, time.monotonic(), 60.0)
        assert answer(run, request()) == b"action=OK\n\n"
        assert len(backend.requests) == 1


LINES = st.sampled_from([b"action=", b"OK", b"REJECT 5.7.1 x", b"\n", b"\n\n", b"\0", b"=", b" "])


@given(st.one_of(st.binary(max_size=VERDICT_ANSWER),
                 st.lists(LINES, max_size=8).map(b"".join)))
def test_whatever_a_slot_holds_a_lookup_gives_one_answer_or_none(held):
    """Whatever bytes a whole slot holds, a lookup gives one answer as Postfix reads it (one
    `action=` line, the empty line, no NUL), or nothing."""
    table = VerdictTable(4, shared=False)
    table.store(7, held, 100.0, 60.0)
    found = table.find(7, 101.0, 60.0)
    if found is not None:
        got = found[0]
        assert got.startswith(b"action=") and got.endswith(b"\n\n")
        assert got.count(b"\n") == 2 and b"\0" not in got


@pytest.mark.parametrize("stamp", [float("nan"), 1e12, float("inf"), float("-inf")])
def test_a_slot_whose_time_is_nan_or_in_the_future_is_a_miss(stamp):
    """A slot's time is when its answer came: a NaN, infinite or future time (written so by
    any process that maps the table) is a miss, not an entry served past `cache` and
    `cache-stale` for ever."""
    table = VerdictTable(8, shared=False)
    table.store(7, b"action=REJECT pinned\n\n", stamp, 60.0)
    assert table.find(7, 1000.0, 60.0) is None
    assert table.find(7, 1000.0, 1e300) is None
