"""The verdict cache's steps on the way of one request (`Cache`, a dispatcher's `cache`).

A pool with `cache = S` keeps its services' good answers in its verdict table
(tables/verdicts.py, one for all workers) under the hash of the request's key: its
`protocol_state` and the values of cache-key's attributes, masked as `hash:` masks them
(hashkey.py). Three steps, called by the dispatcher and the `Job` (dispatch.py, job.py), which
import nothing of this:

- `lookup`, before a `Job` is made (`Dispatcher.submit`): an answer younger than S answers the
  request at once, without a Job (with one, `service=cache`, when the request is logged or
  copied to a shadow), counted as a hit; else a miss, and the job gets the key and the table's
  epoch then;
- `keep`, when a service answered: the answer is kept if cache-actions matches its action
  (not a temporary one by default; an answer that matched fail-answer never gets here) and it
  fits in a slot, with the epoch of the lookup: an answer asked before a cache-clear and
  given after it is not kept;
- `stale`, when the job would answer the default because every service failed, is down or the
  total timeout was reached: an answer of the key younger than cache-stale goes out instead,
  counted and logged as `stale=AGE`. As the default it replaces, it is no service's answer
  (`Job.finish(stale=True)`): a hedge is not won by it nor learns its time, and it is not
  copied to a shadow.

A pool that caches does not take the lane (lane.qualifies): its requests need the key.
"""

from __future__ import annotations

import time

from hapolicy.config.cachecheck import compile_actions
from hapolicy.request.hashkey import mask_address, parse_hash_attrs
from hapolicy.request.job import Job
from hapolicy.tables.layout import (
    DEFAULT_DOWN,
    DEFAULT_FAILED,
    DEFAULT_TIMEOUT,
    VERDICT_ANSWER,
    VERDICT_HITS,
    VERDICT_MISSES,
    VERDICT_STALE,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.base.protocol import Request
    from hapolicy.config.records import DaemonConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.request.job import Client
    from hapolicy.tables.verdicts import VerdictTable

STALE_REASONS = (DEFAULT_FAILED, DEFAULT_DOWN, DEFAULT_TIMEOUT)  # the defaults it may replace
MAX_JUDGED = 64  # distinct answers whose cache-actions verdict is remembered


class Cache:
    """The verdict cache of one pool in one process (its dispatcher's), on the pool's shared
    table."""

    __slots__ = ("counts", "d", "fresh", "judged", "key", "keeps", "live", "stale_age", "table",
                 "through_job")

    def __init__(self, dispatcher: Dispatcher, table: VerdictTable) -> None:
        config = dispatcher.config
        self.d = dispatcher
        self.table = table
        self.counts = table.f
        self.key = key_function(config.cache_key)
        self.fresh = config.cache
        self.stale_age = config.cache_stale
        self.live = max(config.cache, config.cache_stale)  # an entry younger is still of use
        self.keeps = compile_actions(config.cache_actions).match
        self.judged: dict[bytes, bool] = {}  # an action: whether it is kept
        # a hit that is logged (-l) or copied to a shadow goes out through a Job, which does both
        self.through_job = dispatcher.log_requests or bool(config.shadow)

    def lookup(self, request: Request, client: Client) -> tuple[int, float] | None:
        """Answer the request from the cache if its key has a fresh answer (None); else its
        key and the table's epoch (a miss). An exception costs this request the default answer
        (None)."""
        d = self.d
        try:
            key = self.key(request)
            epoch = self.table.epoch()  # before the lookup: a cache-clear after it is seen
            found = self.table.find(key, time.monotonic(), self.fresh)
            if found is None:
                self.counts[VERDICT_MISSES] += 1.0
                return key, epoch
            self.counts[VERDICT_HITS] += 1.0
            if self.through_job:
                d.in_flight += 1
                Job(d, request, client).finish(found[0], "cache")
            else:
                client.deliver(found[0])
        except Exception as exc:  # noqa: BLE001 - it costs this request, not the worker
            d.internal_error(exc, False)
            client.deliver(d.default_answer)
        return None

    def keep(self, job: Job, action: bytes) -> None:
        """A service answered job's request with action (its `action=` line): keep it if
        cache-actions says so and it fits."""
        kept = self.judged.get(action)
        if kept is None:
            kept = len(action) + 2 <= VERDICT_ANSWER and self.keeps(action[7:]) is not None
            if len(self.judged) < MAX_JUDGED:
                self.judged[action] = kept
        if kept and job.cache_key is not None and job.cache_epoch is not None:
            self.table.store(job.cache_key, action + b"\n\n", time.monotonic(), self.live,
                             job.cache_epoch)

    def stale(self, job: Job, why: str, word: int) -> bool:
        """Answer job's request with its key's stale answer instead of the default (why, its
        counter word), if there is one younger than cache-stale (True)."""
        if not self.stale_age or word not in STALE_REASONS or job.cache_key is None:
            return False
        found = self.table.find(job.cache_key, time.monotonic(), self.stale_age)
        if found is None:
            return False
        answer, age = found
        self.counts[VERDICT_STALE] += 1.0
        d = job.d
        d.warnings.warning(f"{d.config.log_prefix}no service answered ({why}): stale={age:.0f}s "
                           f"action={answer[7:-2].decode('utf-8', 'replace')}")
        job.finish(answer, f"cache stale={age:.1f}s", stale=True)
        return True


def key_function(cache_key: str) -> Callable[[Request], int]:
    """What makes a request's cache key: the hash of its protocol_state and cache-key's
    attributes, addresses masked as hashkey.py masks them. Each attribute is found by its own
    search for `\nNAME=` (precomputed), about half of what Request.attr_bytes costs: every
    request of a pool that caches pays it."""
    needles = tuple((b"\n" + name + b"=", v4, v6)
                    for name, v4, v6 in parse_hash_attrs("hash:protocol_state," + cache_key))

    def key(request: Request) -> int:
        raw = b"\n" + request.raw
        find = raw.find
        values = []
        for needle, v4, v6 in needles:
            start = find(needle)
            if start < 0:
                values.append(b"")
                continue
            start += len(needle)
            value = raw[start:find(b"\n", start)]
            values.append(value if v4 < 0 else mask_address(value, v4, v6))
        return hash(tuple(values))

    return key


def attach_cache(dispatcher: Dispatcher, table: VerdictTable | None) -> None:
    """The cache of a pool that caches on its dispatcher (`Dispatcher.attach_cache`); the
    pool's shared table, or a private one (spawn mode, tests: one process's)."""
    config = dispatcher.config
    if not config.cache:
        return
    if table is None:
        from hapolicy.tables.verdicts import VerdictTable

        table = VerdictTable(config.cache_size, shared=False)
    dispatcher.attach_cache(Cache(dispatcher, table))


def warnings(config: DaemonConfig) -> list[str]:
    """--check-config's line for a spawn mode pool that caches: its cache lives as long as one
    process."""
    if config.addresses:
        return []
    return [f"pool {pool.name}: cache in spawn mode: each spawned process (one SMTP "
            "connection) has a cache of its own, and cache-stale answers only what it kept"
            for pool in config.pools if pool.cache]
