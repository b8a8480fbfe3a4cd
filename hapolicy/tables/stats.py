"""Per-service statistics kept in the health table, apart from the hot slot that every pick reads.

The table (health.py) is, in float64 words: a slot of SLOT words per service (health and
balancing, read on every pick), the pool's own slot, then a statistics slot of STATS words per
service (this module's), then one word per worker slot: the requests that worker has in flight
for the pool, as of its last housekeeping pass. Workers add to the statistics in place without
locks, as to the other counters (a rare lost increment under a race is accepted).

A service's statistics slot (offsets in S):

- FAILURES + outcome: the live requests' failures that counted against it, by outcome category
  (outcome.py's codes; ANSWERED, LOCAL and ABANDONED stay 0).
- ACTIONS + k: its good answers by the first word of their action, upper-cased, one of ACTIONS
  (OK, DUNNO, REJECT, DEFER, DEFER_IF_PERMIT; 4xx and 5xx for `4NN text` and `5NN text`; every
  other word, and an empty action, is `other`).
- LAST_CHANGE: the wall-clock time it last went down or came back (the table's making before).
- DOWN_TOTAL: seconds down over the down periods that ended (the current one is added on read).
- LATENCY_SUM, BUCKETS + b: the seconds its good answers took (from the exchange's start to the
  answer read), and how many fell in each bucket: b is the first bound of BOUNDS at or above
  the latency, len(BOUNDS) for those above the last (+Inf). Buckets are not cumulative here.

A good answer costs the request path three float adds, a bisect of BOUNDS (a compare when it
is in the first bucket) and one dict look-up of its action's first 16 bytes (`action_offset`
fills that cache, bounded; the lane looks its short answers up whole instead).
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.tables.health import HealthTable

STATS = 40  # words per service (five cache lines)


class S:
    """Offsets inside a service's statistics slot."""

    FAILURES = 0  # + outcome code (10 words)
    ACTIONS = 10  # + index in ACTIONS (8 words)
    LAST_CHANGE = 18
    DOWN_TOTAL = 19
    LATENCY_SUM = 20
    BUCKETS = 21  # + bucket (len(BOUNDS) + 1 words); 35..39 unused


BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIRST_BOUND = BOUNDS[0]  # at or below it: bucket 0, no bisect (a fast service's answers)
ACTIONS = ("OK", "DUNNO", "REJECT", "DEFER", "DEFER_IF_PERMIT", "4xx", "5xx", "other")
_WORDS = {word.encode(): k for k, word in enumerate(ACTIONS[:5])}
ACTION_PREFIX = 16  # bytes of the action that decide its word (the longest word is 15)
CACHE_MAX = 256  # action prefixes remembered per process and pool


def action_index(action: bytes) -> int:
    """The index in ACTIONS of an `action=...` line's first word."""
    words = action[7:7 + ACTION_PREFIX].split(None, 1)
    if not words:
        return len(ACTIONS) - 1
    word = words[0].upper()
    k = _WORDS.get(word)
    if k is not None:
        return k
    if len(word) == 3 and word.isdigit() and word[:1] in (b"4", b"5"):
        return 5 if word[:1] == b"4" else 6
    return len(ACTIONS) - 1


def action_offset(cache: dict[bytes, int], action: bytes) -> int:
    """The offset (S.ACTIONS + k) of an action line's word, remembered in cache by its first
    ACTION_PREFIX bytes (at most CACHE_MAX of them)."""
    offset = S.ACTIONS + action_index(action)
    if len(cache) < CACHE_MAX:
        cache[action[7:7 + ACTION_PREFIX]] = offset
    return offset


def word(table: HealthTable, i: int, offset: int) -> float:
    """Word `offset` of service i's statistics slot."""
    return table.f[table.stats + i * STATS + offset]


def buckets(table: HealthTable, i: int) -> list[int]:
    """Service i's good answers per latency bucket (not cumulative; the last is +Inf)."""
    base = table.stats + i * STATS + S.BUCKETS
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
    from hapolicy.tables.health import SLOT

    return table.f[i * SLOT] == 0.0


def down_seconds(table: HealthTable, i: int, now: float) -> float:
    """Seconds service i has been down (by its health) in total, the current period included;
    now is the monotonic time."""
    total = word(table, i, S.DOWN_TOTAL)
    if not is_up(table, i):  # down (or due a probe) since DOWN_SINCE
        total += max(0.0, now - table.down_since(i))
    return total


def failures_by_outcome(table: HealthTable, i: int) -> dict[int, int]:
    """Service i's failures per outcome code, for the codes that count against a service."""
    from hapolicy.base.outcome import NAMES, counts_against_service

    return {o: int(word(table, i, S.FAILURES + o)) for o in range(len(NAMES))
            if counts_against_service(o)}


def answers_by_action(table: HealthTable, i: int) -> list[int]:
    """Service i's good answers per word of ACTIONS."""
    return [int(word(table, i, S.ACTIONS + k)) for k in range(len(ACTIONS))]
