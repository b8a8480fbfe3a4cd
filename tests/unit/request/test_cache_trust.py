"""What the verdict cache gives back can be trusted (request/cache.py, tables/verdicts.py): a
slot that is whole but holds no single answer is a miss, and so is one whose time is NaN or
in the future; an answer asked for before a cache-clear is not kept after it, nor one a
reload stopped keeping, nor one the retiring workers keep after a reload gave the pool another
table; a stale answer is no service's answer to a hedge or a shadow; a pool that caches is
refused when PYTHONHASHSEED fixes the hash secret its keys depend on."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.backends import FakeBackend
from testkit.dispatching import Client
from testkit.logs import KeptLog
from testkit.protocol import request

from hapolicy.base.protocol import RequestFramer
from hapolicy.config.cachecheck import cache_problem
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.monitor import cachecounts
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    HEDGE_WON,
    HEDGED,
    VERDICT_ANSWER,
    VERDICT_STALE,
    VERDICT_STORED,
)
from hapolicy.tables.verdicts import VerdictTable, attach, carry

CACHED = {"cache": 60.0, "cache_key": "client_address,sender", "sticky_instance": False}


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
        assert run.answer(request()) == b"action=OK\n\n"
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


def test_an_answer_asked_before_cache_clear_and_given_after_it_is_not_kept(runs):
    """An answer in flight while `hapolicyctl cache-clear` empties the cache (an operator
    clears because the service's data changed) is given to its client but not kept: the next
    request of its key asks the service again."""
    with FakeBackend(action="REJECT listed", delay=0.4) as backend:
        run = runs(backend.spec("B", timeout=5), **CACHED)
        client = Client()
        [framed] = RequestFramer().feed(request())
        run.dispatcher.submit(framed, client)
        started = time.monotonic()
        while not backend.requests:  # asked, not yet answered
            assert time.monotonic() - started < 10
            run.loop.run_once(0.02)
        run.dispatcher.cache.table.clear()  # what cache-clear does
        while not client.answers:
            assert time.monotonic() - started < 10
            run.loop.run_once(0.05)
        assert client.answers == [b"action=REJECT listed\n\n"]
        backend.set_mode("answer", action="OK", delay=0.0)
        assert run.answer(request()) == b"action=OK\n\n"
        assert len(backend.requests) == 2
        assert run.answer(request()) == b"action=OK\n\n"  # this one is kept
        assert len(backend.requests) == 2


def _pool(**settings) -> PoolConfig:
    settings = {"cache": 60.0, "cache_key": "client_address,sender", "name": "spf",
                "sticky_instance": False, **settings}
    return PoolConfig(services=(parse_service("A=127.0.0.1:1"),), **settings)


@pytest.mark.parametrize("actions", [r"(DUNNO|OK)(\s|$)", r"(DUNNO|OK|REJECT)(\s|$)"])
def test_a_reload_that_changes_cache_actions_starts_an_empty_cache(actions):
    """A reload (HUP) that changes cache-actions (an operator who stops keeping REJECTs)
    gives the pool an empty cache, with the counters of the old one: no answer kept under the
    old cache-actions is served for `cache` or `cache-stale` seconds after it."""
    before, after = [_pool()], [_pool(cache_actions=actions)]
    tables = {"spf": HealthTable(1, shared=False)}
    attach(before, tables)
    old = tables["spf"].verdicts
    assert old is not None
    old.store(42, b"action=REJECT 5.7.1 listed\n\n", time.monotonic(), 60.0)
    new = {"spf": tables["spf"]}  # the same services: the health table stays
    carry(before, after, tables, new)
    assert new["spf"].verdicts is not old
    assert new["spf"].verdicts.find(42, time.monotonic(), 60.0) is None
    assert new["spf"].verdicts.counter(VERDICT_STORED) == 1


@pytest.mark.parametrize("change", [{"cache_key": "client_address/24,sender"},
                                    {"cache_size": 20000}, {"cache": 0.0}, None])
def test_a_table_a_reload_replaces_serves_and_keeps_nothing_for_the_retiring_workers(change):
    """A reload (HUP) that gives a pool a new verdict table (cache-key or cache-size changed),
    none (it stops caching) or drops the pool retires the old table: the retiring workers,
    which keep it while they serve their open connections, find nothing in it and keep
    nothing in it, so no entry of theirs outlives a `cache-clear` of the pool."""
    before = [_pool()]
    after = [] if change is None else [_pool(**change)]
    tables = {"spf": HealthTable(1, shared=False)}
    attach(before, tables)
    old = tables["spf"].verdicts
    now = time.monotonic()
    old.store(42, b"action=REJECT 5.7.1 listed\n\n", now, 60.0)
    asked = old.epoch()  # a retiring worker's request asked before the reload
    new = {p.name: tables["spf"] for p in after}  # the same services: the health table stays
    carry(before, after, tables, new)
    assert old.find(42, now, 60.0) is None
    old.store(43, b"action=REJECT 5.7.1 listed\n\n", now, 60.0)
    old.store(44, b"action=REJECT 5.7.1 listed\n\n", now, 60.0, asked)
    old.clear()
    assert old.find(43, now, 60.0) is None and old.find(44, now, 60.0) is None
    if after and after[0].cache:
        said = cachecounts.clear(DaemonConfig(pools=tuple(after)), new, ["spf"], KeptLog())
        assert said.startswith("ok")


def test_a_table_a_reload_keeps_still_serves():
    """A reload that keeps the pool's services, cache-key, cache-actions and cache-size keeps
    its table as it was: its entries are served and new ones kept."""
    before, after = [_pool()], [_pool(cache=120.0)]
    tables = {"spf": HealthTable(1, shared=False)}
    attach(before, tables)
    kept = tables["spf"].verdicts
    now = time.monotonic()
    kept.store(42, b"action=OK\n\n", now, 60.0)
    carry(before, after, tables, tables)
    assert tables["spf"].verdicts is kept
    assert kept.find(42, now, 60.0) is not None
    kept.store(43, b"action=OK\n\n", now, 60.0, kept.epoch())
    assert kept.find(43, now, 60.0) is not None


class Mirror:
    """A shadow's mirror that notes what it is given."""

    def __init__(self) -> None:
        self.copies: list[bytes] = []

    def copy(self, request, answer: bytes) -> None:
        self.copies.append(answer)


def test_a_stale_answer_is_no_hedge_won(runs):
    """In a pool that hedges, a stale answer given because both the first service and the
    hedge failed is not counted as a hedge won."""
    with FakeBackend(action="OK") as first, FakeBackend(action="OK") as second:
        run = runs(first.spec("A", timeout=5), second.spec("B", timeout=5), hedge="0.05",
                   hedge_max=100.0, default_action="DUNNO",
                   **{**CACHED, "cache": 0.1, "cache_stale": 30.0})
        assert run.answer(request()) == b"action=OK\n\n"
        time.sleep(0.15)
        first.set_mode("garbage", delay=0.2)
        second.set_mode("garbage", delay=0.2)
        assert run.answer(request()) == b"action=OK\n\n"  # stale
        assert run.dispatcher.cache.counts[VERDICT_STALE] == 1
        assert run.health.counter(HEDGED) == 1
        assert run.health.counter(HEDGE_WON) == 0


def test_a_stale_answer_teaches_no_answer_time_and_goes_to_no_shadow(runs):
    """A stale answer given because the service failed is not learned as the service's answer
    time (the pNN a hedge's delay comes from), and is not copied to the pool's shadow
    (cache-force): neither is a service's answer."""
    with FakeBackend(action="OK") as backend:
        run = runs(backend.spec("A", timeout=5), hedge="p90", default_action="DUNNO",
                   **{**CACHED, "cache": 0.1, "cache_stale": 30.0})
        mirror = Mirror()
        run.dispatcher.attach_mirror(mirror)
        [latency] = run.dispatcher.hedger.latency
        assert run.answer(request()) == b"action=OK\n\n"
        assert (latency.count, mirror.copies) == (1, [b"action=OK\n\n"])
        time.sleep(0.15)
        backend.set_mode("garbage")
        assert run.answer(request()) == b"action=OK\n\n"  # stale
        assert run.dispatcher.cache.counts[VERDICT_STALE] == 1
        assert (latency.count, mirror.copies) == (1, [b"action=OK\n\n"])


@pytest.mark.parametrize(("seed", "refused"), [("0", True), ("123", True), ("random", False),
                                               ("", False), (None, False)])
def test_a_pool_that_caches_is_refused_when_pythonhashseed_fixes_the_secret(
        monkeypatch, seed, refused):
    """A cache's entries are found by Python's hash of their key: when PYTHONHASHSEED fixes
    its secret (a number), whoever chooses `sender` could search for a key sharing another's
    hash, so a pool that caches is refused (cache-force or not); unset or `random`, it is
    not."""
    if seed is None:
        monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    else:
        monkeypatch.setenv("PYTHONHASHSEED", seed)
    for pool in (_pool(), _pool(cache_force=True)):
        problem = cache_problem(pool)
        assert (f"cache with PYTHONHASHSEED={seed}:" in problem) if refused else problem == ""
    assert cache_problem(_pool(cache=0.0)) == ""  # a pool that does not cache
