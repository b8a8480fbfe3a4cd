"""Per-service statistics kept in the health table, apart from the hot slot that every pick
reads: their readers, and the action word of an answer.

A service's statistics slot (layout.py: STATS words, in a region of their own after the pool's
slot) holds its failures by outcome, its good answers by action word, the time of its last
change and its time down, and the sum and histogram of its good answers' latency. Workers add
to them in place without locks, as to the other counters (a rare lost increment under a race
is accepted).

A good answer costs the request path three float adds, a bisect of BOUNDS (a compare when it
is in the first bucket) and one dict look-up of its action's first 16 bytes (`action_offset`
fills that cache, bounded; the lane looks its short answers up whole instead).
"""

from __future__ import annotations

import math

from hapolicy.tables.layout import (
    ACTIONS,
    ANSWERS_BY_ACTION,
    BOUNDS,
    DOWN_TOTAL,
    DOWN_UNTIL,
    FAILURES_BY_OUTCOME,
    LATENCY_BUCKETS,
    SLOT,
    STATS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.tables.health import HealthTable

FIRST_BOUND = BOUNDS[0]  # at or below it: bucket 0, no bisect (a fast service's answers)
_WORDS = {word.encode(): k for k, word in enumerate(ACTIONS[:5])}
ACTION_PREFIX = 16  # bytes of the action that decide its word (the longest word is 15)
CACHE_MAX = 256  # action prefixes remembered per process and pool
CODE_4XX, CODE_5XX, OTHER = ACTIONS.index("4xx"), ACTIONS.index("5xx"), ACTIONS.index("other")


def action_index(action: bytes) -> int:
    """The index in ACTIONS of an `action=...` line's first word."""
    words = action[7:7 + ACTION_PREFIX].split(None, 1)
    if not words:
        return OTHER
    word = words[0].upper()
    k = _WORDS.get(word)
    if k is not None:
        return k
    if len(word) == 3 and word.isdigit() and word[:1] in (b"4", b"5"):
        return CODE_4XX if word[:1] == b"4" else CODE_5XX
    return OTHER


def action_offset(cache: dict[bytes, int], action: bytes) -> int:
    """The offset (ANSWERS_BY_ACTION + k) of an action line's word in a statistics slot,
    remembered in cache by its first ACTION_PREFIX bytes (at most CACHE_MAX of them)."""
    offset = ANSWERS_BY_ACTION + action_index(action)
    if len(cache) < CACHE_MAX:
        cache[action[7:7 + ACTION_PREFIX]] = offset
    return offset


def word(table: HealthTable, i: int, offset: int) -> float:
    """Word `offset` of service i's statistics slot."""
    return table.f[table.stats + i * STATS + offset]


def buckets(table: HealthTable, i: int) -> list[int]:
    """Service i's good answers per latency bucket (not cumulative; the last is +Inf)."""
    base = table.stats + i * STATS + LATENCY_BUCKETS
    return [int(v) for v in table.f[base:base + len(BOUNDS) + 1]]


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram, interpolated inside its bucket as
    Prometheus's histogram_quantile does; inf when it falls above the last bound, None when
    the histogram is empty."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for b, count in enumerate(counts):
        if count and seen + count >= rank:
            if b == len(BOUNDS):
                return math.inf
            lower = BOUNDS[b - 1] if b else 0.0
            return lower + (BOUNDS[b] - lower) * (rank - seen) / count
        seen += count
    return math.inf  # not reached: the counts add up to total


def is_up(table: HealthTable, i: int) -> bool:
    """Whether service i is up by its health: no failure since it last came back. Without
    checks, a service whose cool-down is over stays down until a probe answers."""
    return table.f[i * SLOT + DOWN_UNTIL] == 0.0


def down_seconds(table: HealthTable, i: int, now: float) -> float:
    """Seconds service i has been down (by its health) in total, the current period included;
    now is the monotonic time."""
    total = word(table, i, DOWN_TOTAL)
    if not is_up(table, i):  # down (or due a probe) since DOWN_SINCE
        total += max(0.0, now - table.down_since(i))
    return total


def failures_by_outcome(table: HealthTable, i: int) -> dict[int, int]:
    """Service i's failures per outcome code, for the codes that count against a service."""
    from hapolicy.base.outcome import NAMES, counts_against_service

    return {o: int(word(table, i, FAILURES_BY_OUTCOME + o)) for o in range(len(NAMES))
            if counts_against_service(o)}


def answers_by_action(table: HealthTable, i: int) -> list[int]:
    """Service i's good answers per word of ACTIONS."""
    return [int(word(table, i, ANSWERS_BY_ACTION + k)) for k in range(len(ACTIONS))]
