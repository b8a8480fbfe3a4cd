"""The verdict cache's steps on the way of one request (`Cache`, a dispatcher's `cache`).

A pool with `cache = S` keeps its services' good answers in its verdict table
(tables/verdicts.py, one for all workers) under the hash of the request's key: its
`protocol_state` and the values of cache-key's attributes, masked as `hash:` masks them
(hashkey.py). Three steps, each called by the `Job` (job.py), which imports nothing of this:

- `answered`, at the job's start: an answer younger than S answers the request at once
  (`service=cache`), counted as a hit; else a miss, and the job goes on to the services;
- `keep`, when a service answered: the answer is kept if cache-actions matches its action
  (not a temporary one by default; an answer that matched fail-answer never gets here) and it
  fits in a slot;
- `stale`, when the job would answer the default because every service failed, is down or the
  total timeout was reached: an answer of the key younger than cache-stale goes out instead,
  counted and logged as `stale=AGE`.

A pool that caches does not take the lane (lane.qualifies): its requests need the key.
"""

from __future__ import annotations

import time

from hapolicy.config.cachecheck import compile_actions
from hapolicy.request.hashkey import key_function
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
    from hapolicy.base.protocol import Request
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.request.job import Job
    from hapolicy.tables.verdicts import VerdictTable

STALE_REASONS = (DEFAULT_FAILED, DEFAULT_DOWN, DEFAULT_TIMEOUT)  # the defaults it may replace
MAX_JUDGED = 64  # distinct answers whose cache-actions verdict is remembered


class Cache:
    """The verdict cache of one pool in one process, on the pool's shared table."""

    __slots__ = ("counts", "fresh", "judged", "key_of", "keeps", "live", "stale_age", "table")

    def __init__(self, config: PoolConfig, table: VerdictTable) -> None:
        self.table = table
        self.counts = table.f
        make_key = key_function("hash:protocol_state," + config.cache_key)
        assert make_key is not None
        self.key_of = make_key
        self.fresh = config.cache
        self.stale_age = config.cache_stale
        self.live = max(config.cache, config.cache_stale)  # an entry younger is still of use
        self.keeps = compile_actions(config.cache_actions).match
        self.judged: dict[bytes, bool] = {}  # an action: whether it is kept

    def key(self, request: Request) -> int:
        """The hash of the request's cache key: what its entry is kept under."""
        return hash(self.key_of(request))

    def answered(self, job: Job) -> bool:
        """Answer job's request from the cache if its key (job.cache_key) has a fresh answer
        (True)."""
        found = self.table.find(job.cache_key, job.started, self.fresh)
        if found is None:
            self.counts[VERDICT_MISSES] += 1.0
            return False
        self.counts[VERDICT_HITS] += 1.0
        job.finish(found[0], "cache")
        return True

    def keep(self, job: Job, action: bytes) -> None:
        """A service answered job's request with action (its `action=` line): keep it if
        cache-actions says so and it fits."""
        kept = self.judged.get(action)
        if kept is None:
            kept = len(action) + 2 <= VERDICT_ANSWER and self.keeps(action[7:]) is not None
            if len(self.judged) < MAX_JUDGED:
                self.judged[action] = kept
        if kept and job.cache_key is not None:
            self.table.store(job.cache_key, action + b"\n\n", time.monotonic(), self.live)

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
        job.finish(answer, f"cache stale={age:.1f}s")
        return True


def attach_cache(dispatcher: object, config: PoolConfig, table: VerdictTable | None) -> None:
    """The cache of a pool that caches on its dispatcher (`Dispatcher.attach_cache`); the
    pool's shared table, or a private one (spawn mode, tests: one process's)."""
    if not config.cache:
        return
    if table is None:
        from hapolicy.tables.verdicts import VerdictTable

        table = VerdictTable(config.cache_size, shared=False)
    dispatcher.attach_cache(Cache(config, table))  # type: ignore[attr-defined]


def warnings(config: DaemonConfig) -> list[str]:
    """--check-config's line for a spawn mode pool that caches: its cache lives as long as one
    process."""
    if config.addresses:
        return []
    return [f"pool {pool.name}: cache in spawn mode: each spawned process (one SMTP "
            "connection) has a cache of its own, and cache-stale answers only what it kept"
            for pool in config.pools if pool.cache]
