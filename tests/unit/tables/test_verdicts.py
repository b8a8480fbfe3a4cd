"""The verdict cache's shared table (hapolicy.tables.verdicts): what a lookup finds by key and
age, the oldest of a set out first (evictions counted), a new epoch forgets everything, a torn
slot is a miss, a reload keeps the entries of a pool whose key and services stay, and memory
stays what cache-size made whatever the keys."""

from __future__ import annotations

import os
import resource

from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.tables.health import HealthTable
from hapolicy.tables.layout import (
    VERDICT_EVICTIONS,
    VERDICT_HEADER,
    VERDICT_SLOT,
    VERDICT_STORED,
    VERDICT_WAYS,
)
from hapolicy.tables.verdicts import VerdictTable, attach, carry


def test_a_kept_answer_is_found_by_its_key_until_it_is_too_old():
    table = VerdictTable(100)
    table.store(42, b"action=OK\n\n", 1000.0, 60.0)
    assert table.find(42, 1010.0, 60.0) == (b"action=OK\n\n", 10.0)
    assert table.find(42, 1060.0, 60.0) is None  # as old as max_age: gone
    assert table.find(42, 1060.0, 600.0) == (b"action=OK\n\n", 60.0)  # still there for stale
    assert table.find(43, 1010.0, 60.0) is None
    table.store(42, b"action=REJECT no\n\n", 1020.0, 60.0)  # its own slot, overwritten
    assert table.find(42, 1021.0, 60.0) == (b"action=REJECT no\n\n", 1.0)
    assert table.counter(VERDICT_STORED) == 2
    assert table.counter(VERDICT_EVICTIONS) == 0


def test_a_full_set_puts_its_oldest_out_and_counts_it_while_it_was_in_use():
    table = VerdictTable(VERDICT_WAYS)  # one set
    for key in range(VERDICT_WAYS):
        table.store(key, b"action=DUNNO\n\n", 100.0 + key, 60.0)
    table.store(99, b"action=OK\n\n", 110.0, 60.0)
    assert table.find(0, 111.0, 60.0) is None  # the oldest went
    assert all(table.find(k, 111.0, 60.0) for k in (1, 2, 3, 99))
    assert table.counter(VERDICT_EVICTIONS) == 1
    table.store(98, b"action=OK\n\n", 500.0, 60.0)  # the oldest was out of use: no eviction
    assert table.counter(VERDICT_EVICTIONS) == 1


def test_a_key_lives_in_its_set_only():
    table = VerdictTable(8)  # two sets: even and odd keys
    for key in range(0, 40, 2):
        table.store(key, b"action=DUNNO\n\n", 100.0 + key, 600.0)
    table.store(1, b"action=OK\n\n", 100.0, 600.0)
    assert table.find(1, 200.0, 600.0) is not None  # the even keys never took its place
    assert sum(table.find(k, 200.0, 600.0) is not None for k in range(0, 40, 2)) == 4


def test_cache_clear_forgets_every_entry_at_once():
    table = VerdictTable(100)
    for key in range(50):
        table.store(key, b"action=OK\n\n", 100.0, 60.0)
    table.clear()
    assert all(table.find(k, 101.0, 60.0) is None for k in range(50))
    table.store(7, b"action=DUNNO\n\n", 102.0, 60.0)  # its slot of the old epoch, taken again
    assert table.find(7, 103.0, 60.0) == (b"action=DUNNO\n\n", 1.0)


def test_a_torn_slot_is_a_miss():
    table = VerdictTable(4)
    table.store(5, b"action=REJECT spf fail\n\n", 100.0, 60.0)
    slots = [VERDICT_HEADER * 8 + i * VERDICT_SLOT for i in range(4)]
    start = next(s for s in slots if table.q[s // 8] == 5)
    table._map[start + 40] ^= 0x20  # another writer's byte in the answer
    assert table.find(5, 101.0, 60.0) is None
    table._map[start + 40] ^= 0x20
    assert table.find(5, 101.0, 60.0) is not None
    table.f[start // 8 + 1] = 99.0  # the time of another writer: the CRC no longer matches
    assert table.find(5, 101.0, 60.0) is None


def test_memory_stays_what_cache_size_made_for_a_million_keys():
    table = VerdictTable(10000, shared=False)
    answer = b"action=PREPEND Received-SPF: pass (example.org: 192.0.2.1 is allowed)\n\n"

    def rss() -> int:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    for key in range(100_000):  # every slot touched
        table.store(hash(b"k%d" % key), answer, float(key), 1e9)
    before = rss()
    for key in range(100_000, 1_000_000):
        table.store(hash(b"k%d" % key), answer, float(key), 1e9)
    assert rss() - before < 1 << 20
    assert table.counter(VERDICT_EVICTIONS) >= 1_000_000 - table.size


def _pool(name: str = "spf", **settings) -> PoolConfig:
    settings = {"cache": 60.0, "cache_key": "client_address,sender", **settings}
    return PoolConfig(services=(parse_service("A=127.0.0.1:1"),), name=name, **settings)


def test_a_reload_keeps_the_entries_of_a_pool_whose_key_and_services_stay():
    before = [_pool("spf"), _pool("dnsbl"), _pool("gone"), _pool("plain", cache=0.0)]
    tables = {p.name: HealthTable(1, shared=False) for p in before}
    attach(before, tables)
    assert tables["plain"].verdicts is None
    kept, rekeyed = tables["spf"].verdicts, tables["dnsbl"].verdicts
    assert kept is not None and rekeyed is not None
    rekeyed.f[1] = 5.0  # a counter
    after = [_pool("spf", cache=120.0), _pool("dnsbl", cache_key="client_address/24"),
             _pool("plain"), _pool("off", cache=0.0)]
    new = {**{p.name: tables[p.name] for p in after if p.name in tables},
           "off": HealthTable(1, shared=False)}
    carry(before, after, tables, new)
    assert new["spf"].verdicts is kept  # the same entries
    assert new["dnsbl"].verdicts is not rekeyed and new["dnsbl"].verdicts.f[1] == 5.0
    assert new["plain"].verdicts is not None  # caches from now on
    assert new["off"].verdicts is None
