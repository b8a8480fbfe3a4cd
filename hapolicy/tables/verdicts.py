"""A pool's verdict cache, shared by all workers through one anonymous mmap (`VerdictTable`).

The master makes it before it forks, beside the pool's health table (`attach`), and carries it
over a reload for a pool whose services, cache-key, cache-actions and cache-size stay
(`carry`); everything else (the answers' age, which answers are kept, stale answers) is the
request path's (request/cache.py). Its words and bytes are named in layout.py.

Why fixed-size slots in an mmap, and not a dict per worker or a server: a key answered by one
worker must be known to the others, memory must stay bounded whatever the keys (cache-size
slots, made once: no allocation while serving), and a lookup must cost less than the exchange
it saves (here the key's hash, at most four int reads, one unpack and one CRC of the slot
found: about 1 µs). Python's `hash` of the key is the slot's key: every process that maps the
table is a fork of one master and shares its hash secret; a new master (an upgrade in place)
starts with an empty cache, so no table outlives the secret. Two keys of one hash (64 bits)
would share an entry: with 10,000 entries kept, a lookup meets another key's hash about once
in 10**15. That holds while the secret is unknown: a pool that caches is refused when
PYTHONHASHSEED fixes it (config/cachecheck.py), since a known secret lets whoever chooses
`sender` search for a key of another's hash. (A keyed BLAKE2b digest of the key instead costs
about 1 µs more per request, a twentieth of a hit's whole cost.)

The slots are set-associative: a key's hash picks a set of VERDICT_WAYS slots; a new key takes
an empty slot of its set, or one of an older epoch (cleared), or else the one whose answer is
oldest (an eviction, counted when that entry could still be served: younger than the longer of
cache and cache-stale). Oldest first out within a set of four approaches oldest first out of
the table without a list shared by every worker.

Torn slots: the health table's words are float64s written whole, but an entry is an answer of
up to 256 bytes that every worker may write. A seqlock (a generation word before and after)
assumes one writer; here two workers may write one slot at once (two keys of one set, or one
key answered twice), and their copies may interleave so that both generation words agree over
mixed bytes. So a slot carries the CRC-32 of its key, time, epoch and answer, written with them
in one copy; a reader copies the slot once, and a slot whose CRC does not match what it holds
is a miss. A race costs at most a miss or the loss of one of the two answers, never one key's
answer given for another's. The counters in the header are float64 words added in place, as
the health table's: a rare increment lost under a race is accepted.

A whole slot is not yet a sound one: any process that maps the table may write any slot (a
bug, or a compromised worker). A reader serves a slot only if it holds one answer as Postfix
reads it (`is_one_answer`) and if its age is at least 0 and under the age asked; else it is a
miss, never an empty answer, two answers or bytes that are none, nor an entry that never ages
(a NaN or future time). The clock is CLOCK_MONOTONIC, one for all processes: an entry stored
by another worker after this one read the clock is a miss, once.

`hapolicyctl cache-clear POOL` (the monitor) adds one to the header's epoch: every entry is
gone at once, in every worker, without writing a slot. An answer asked for before it and given
after it is not kept either: the request path stores with the epoch of its lookup (`asked`).

A reload that gives a pool a new table (or none) retires the old one (`retire`): the workers
that retire keep it mapped while they serve their open connections, but it serves and keeps
nothing from then on, so they ask the services. A cache-clear of the pool therefore has one
table to clear: no entry of the retiring workers outlives it.
"""

from __future__ import annotations

import mmap
from struct import Struct
from zlib import crc32

from hapolicy.tables.layout import (
    VERDICT_ANSWER,
    VERDICT_EPOCH,
    VERDICT_EVICTIONS,
    VERDICT_FIXED,
    VERDICT_HEADER,
    VERDICT_KEY,
    VERDICT_SLOT,
    VERDICT_SLOT_EPOCH,
    VERDICT_STAMP,
    VERDICT_STORED,
    VERDICT_WAYS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Protocol

    from hapolicy.config.records import PoolConfig

    class HealthTable(Protocol):
        """What carries a pool's verdict table: its health table (health.HealthTable)."""

        verdicts: VerdictTable | None

HEAD = Struct("<qdd")  # key hash, time, epoch
FIXED = Struct("<qddII")  # ... then the answer's length and the CRC
HEADER_BYTES = VERDICT_HEADER * 8
WORDS = VERDICT_SLOT // 8  # a slot's words


def sets_for(size: int) -> int:
    """The sets of a table of at least `size` entries."""
    return max(1, -(-size // VERDICT_WAYS))


class VerdictTable:
    """cache-size entries (rounded up to whole sets) of one pool; `shared=False` makes a private
    one (spawn mode: it lives as long as the process, one SMTP connection; tests)."""

    def __init__(self, size: int, shared: bool = True) -> None:
        self.sets = sets_for(size)
        self.size = self.sets * VERDICT_WAYS
        flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
        self._map = mmap.mmap(-1, HEADER_BYTES + self.size * VERDICT_SLOT, flags=flags)
        view = memoryview(self._map)
        self.f = view.cast("d")  # the header's words, and each slot's time and epoch
        self.q = view.cast("q")  # each slot's key hash
        self.f[VERDICT_EPOCH] = 1.0

    def slot_word(self, slot: int) -> int:
        """The first word of a slot."""
        return VERDICT_HEADER + slot * WORDS

    def find(self, key: int, now: float, max_age: float) -> tuple[bytes, float] | None:
        """The answer kept for key and its age, if it is younger than max_age."""
        q = self.q
        word = self.slot_word((key % self.sets) * VERDICT_WAYS)
        for _ in range(VERDICT_WAYS):
            if q[word + VERDICT_KEY] == key:
                found = self._read(word, key, now, max_age)
                if found is not None:
                    return found
            word += WORDS
        return None

    def _read(self, word: int, key: int, now: float, max_age: float
              ) -> tuple[bytes, float] | None:
        start = word * 8
        hashed, stamp, epoch, length, check = FIXED.unpack_from(self._map, start)
        age = now - stamp
        # `not 0 <= age`: a NaN or a future time would keep an entry for ever
        if (hashed != key or epoch != self.f[VERDICT_EPOCH] or not 0.0 <= age < max_age
                or length > VERDICT_ANSWER):
            return None
        start += VERDICT_FIXED
        answer = self._map[start:start + length]
        if crc32(answer, crc32(HEAD.pack(hashed, stamp, epoch))) != check:
            return None  # torn: two writers at once, or one writing while we read
        if not is_one_answer(answer):
            return None  # whole, yet no answer to give Postfix: a worker wrote it so
        return answer, age

    def epoch(self) -> float:
        """The epoch in force: a cache-clear makes a new one."""
        return self.f[VERDICT_EPOCH]

    def store(self, key: int, answer: bytes, now: float, live: float,
              asked: float | None = None) -> None:
        """Keep answer (at most VERDICT_ANSWER bytes) for key from now; an entry younger than
        `live` that has to make room is counted as an eviction. asked: the epoch when the
        answer was asked for; an answer asked before a cache-clear is not kept."""
        f, q = self.f, self.q
        epoch = f[VERDICT_EPOCH]
        if epoch != (epoch if asked is None else asked):
            return  # asked before a cache-clear, or the table is retired (NaN equals nothing)
        first = self.slot_word((key % self.sets) * VERDICT_WAYS)
        victim, oldest = first, float("inf")
        for word in range(first, first + VERDICT_WAYS * WORDS, WORDS):
            if q[word + VERDICT_KEY] == key:  # its own slot, of this epoch or an older one
                victim, oldest = word, -1.0
                break
            stamp = f[word + VERDICT_STAMP] if f[word + VERDICT_SLOT_EPOCH] == epoch else -1.0
            if stamp < oldest:
                victim, oldest = word, stamp
        if oldest >= 0.0 and now - oldest < live:
            f[VERDICT_EVICTIONS] += 1.0
        check = crc32(answer, crc32(HEAD.pack(key, now, epoch)))
        start = victim * 8
        self._map[start:start + VERDICT_FIXED + len(answer)] = (
            FIXED.pack(key, now, epoch, len(answer), check) + answer)
        f[VERDICT_STORED] += 1.0

    def clear(self) -> None:
        """Forget every entry (cache-clear): a new epoch."""
        self.f[VERDICT_EPOCH] += 1.0

    def retire(self) -> None:
        """A reload gave the pool another table (or none): forget every entry and keep none
        from now on, so the retiring workers, which keep this one, ask the services. Its epoch
        is NaN, which equals no epoch, its own included; a cache-clear leaves it NaN."""
        self.f[VERDICT_EPOCH] = float("nan")

    def counter(self, word: int) -> int:
        value = self.f[word]
        return int(value) if -9e15 < value < 9e15 else 0

    def copy_counters(self, other: VerdictTable) -> None:
        """The counters of other (the table this one replaces in a reload)."""
        self.f[1:VERDICT_HEADER] = other.f[1:VERDICT_HEADER]

    def close(self) -> None:
        self.f.release()
        self.q.release()
        self._map.close()


def is_one_answer(answer: bytes) -> bool:
    """Whether a slot's bytes are one answer as Postfix reads it: one `action=` line, then the
    empty line, and no NUL. A CRC says a slot is whole, not that what wrote it was sound: any
    process that maps the table may write a slot."""
    return (answer[:7] == b"action=" and answer.find(b"\n") == len(answer) - 2
            and answer[-1:] == b"\n" and b"\0" not in answer)


def same_cache(old: PoolConfig, new: PoolConfig) -> bool:
    """Whether new may keep old's entries: the same services, cache-key, cache-actions (the
    answers kept) and cache-size."""
    return (bool(old.cache) and bool(new.cache) and old.services == new.services
            and old.cache_key == new.cache_key and old.cache_actions == new.cache_actions
            and old.cache_size == new.cache_size)


def attach(pools: Sequence[PoolConfig], tables: Mapping[str, HealthTable]) -> None:
    """A verdict table for each pool that caches, on its health table (`HealthTable.verdicts`):
    made by the master before it forks, so every worker and the monitor share it."""
    for pool in pools:
        if pool.cache and tables[pool.name].verdicts is None:
            tables[pool.name].verdicts = VerdictTable(pool.cache_size)


def carry(before: Sequence[PoolConfig], after: Sequence[PoolConfig],
          old_tables: Mapping[str, HealthTable], new_tables: Mapping[str, HealthTable]) -> None:
    """A reload's verdict tables: a pool whose services, cache-key, cache-actions and
    cache-size stay keeps its entries; another that caches gets an empty table with the
    counters of its old one. An old table no pool keeps is retired (`VerdictTable.retire`)."""
    running = {p.name: p for p in before}
    old_verdicts = [t.verdicts for t in old_tables.values() if t.verdicts is not None]
    for pool in after:
        old_pool = running.get(pool.name)
        old = old_tables[pool.name].verdicts if old_pool is not None else None
        table = new_tables[pool.name]
        if not pool.cache:
            table.verdicts = None
        elif old is not None and old_pool is not None and same_cache(old_pool, pool):
            table.verdicts = old
        else:
            table.verdicts = VerdictTable(pool.cache_size)
            if old is not None:
                table.verdicts.copy_counters(old)
    in_use = {id(t.verdicts) for t in new_tables.values()}
    for verdicts in old_verdicts:
        if id(verdicts) not in in_use:
            verdicts.retire()
