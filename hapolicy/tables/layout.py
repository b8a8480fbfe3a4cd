"""The layouts of the shared tables: every word of a pool's health table, and of the worker
table, named once here with what it holds; the code that reads and writes them is elsewhere
(health.py, stats.py, workertable.py, and the request path, which reads these names as module
globals: plain ints, no attribute look-up on a pick).

Every word is a float64, written whole (atomic on the platforms Python runs on) and without
locks; a counter is exact up to 2**53, and a rare increment lost under a race is accepted
(statistics, not accounting).

A pool's health table (health.HealthTable) is one mmap, its regions in this order:

    services     SLOT words per service: its health and balancing, read on every pick
    pool         SLOT words: the pool's own (who owns recovery, the pool's counters)
    statistics   STATS words per service: the finer statistics (stats.py)
    in flight    one word per worker slot: the requests that worker has in flight for the pool,
                 as of its last housekeeping pass (none in spawn mode)
    load         LOAD words per worker slot and service: the requests that worker has in flight
                 and waiting for each service, exact (written at each change, by that worker
                 alone: the sum over the slots is the service's load; load.py; none in spawn
                 mode)

`pool_start`, `stats_start`, `in_flight_start`, `load_start` and `table_words` say where each region begins.
Spawn mode's state file (spawn/statefile.py) holds the same words after its header: a change
here must change that file's LAYOUT, so that old files are replaced, not misread.
"""

from __future__ import annotations

# The version of the health table's words (their places and meanings): raised with any change
# to them. An upgrade in place copies a service's words to the new program only between equal
# versions (snapshot.py); spawn mode's state file has a LAYOUT of its own, raised too.
TABLE_LAYOUT = 6

# --- A service's slot (SLOT words), word i * SLOT + name of service i -------------------------
# Its first cache line holds what every pick reads: DOWN_UNTIL + ADMIN is 0.0 when it is UP.

SLOT = 16  # words per service: two 64-byte cache lines
DOWN_UNTIL = 0  # monotonic time its cool-down ends; 0.0 while up; inf while checks own recovery
PROBE_UNTIL = 1  # end of the lease of the request that probes it after its cool-down
SERVED = 2  # its virtual time in weighted round robin (+1/weight per pick)
STREAK = 3  # consecutive failures that doubled its cool-down
DOWN_SINCE = 4  # monotonic time it was last marked down
ANSWERS = 5  # counter: good answers of live requests
FAILURES = 6  # counter: live requests' failures that count against it
ADMIN = 7  # 0.0 enabled; inf: disabled by the operator (read as DOWN, never due a probe)
DRAIN = 8  # 1.0: drained by the operator: no new transaction, no hash key goes there
WEIGHT = 9  # the operator's weight; 0.0: the configured one
BACK_SINCE = 10  # monotonic time it last came back into the rotation (0.0: never since the
#                  table was made): its slow start (selection.py) runs from there
EWMA = 11  # its peak-EWMA answer time in seconds (load.py): least-latency's measure of it
EWMA_AT = 12  # monotonic time of the last answer (or failure) EWMA took in
# 13..15 unused

# Health states of a service (HealthTable.state), from its DOWN_UNTIL, ADMIN and PROBE_UNTIL:
UP = 0  # DOWN_UNTIL + ADMIN is 0.0: selection may pick it
DOWN = 1  # in its cool-down, disabled, owned by checks, or its probe leased to a request
PROBE_DUE = 2  # its cool-down over and no lease out: the next request to claim it probes it

# Admin states of a service (HealthTable.admin), from its ADMIN and DRAIN, as the control
# socket, --state-file and the summary name them:
ENABLED = "enabled"  # ADMIN and DRAIN 0.0: as its health says
DRAINING = "drain"  # DRAIN 1.0: up, but only the transactions sticky to it go there
DISABLED = "disabled"  # ADMIN inf: no request goes there, no check looks at it
ADMIN_STATES = (ENABLED, DRAINING, DISABLED)

# --- The pool's slot (SLOT words after the services'), word pool_start(count) + name ---------

CHECKED = 0  # 1.0 while active checks own the recovery of its services
REQUESTS = 1  # counter: requests the pool's dispatchers sent on their way (a Job each)
DEFAULT_FAILED = 2  # counter of default answers: every service tried failed
DEFAULT_DOWN = 3  # counter of default answers: every service down
DEFAULT_TIMEOUT = 4  # counter of default answers: the total timeout reached
DEFAULT_REFUSED = 5  # counter of default answers: the request refused unread (too large, a
#                      line without `=`)
SHADOW_AGREE = 6  # counter of copies sent to the pool's shadow (shadow.py): same verdict
SHADOW_DISAGREE = 7  # counter of shadow copies: another verdict
SHADOW_FAILED = 8  # counter of shadow copies: the shadow's default answer (failed, timed out)
SHADOW_DROPPED = 9  # counter of shadow copies not sent: too many in flight, or the worker busy
HEDGED = 10  # counter: second services asked by a hedge (hedge.py)
HEDGE_WON = 11  # counter: requests answered by the hedge's service
DEFAULT_INTERNAL = 12  # counter of default answers: an exception while handling the request
DEFAULT_QUEUED_OUT = 13  # counter of default answers: the wait for a service's free slot
#                          (max-inflight) ran out, or its queue was full
LOAD_SLOTS = 14  # the worker slots whose load words are in use: 1 + the highest the master
#                  started a worker in (0.0: every slot); readers sum those alone (load.py)
# 15 unused

# the default answers' counters by reason, as /metrics and the summary line name them
DEFAULT_REASONS = (("failed", DEFAULT_FAILED), ("down", DEFAULT_DOWN),
                   ("timeout", DEFAULT_TIMEOUT), ("refused", DEFAULT_REFUSED),
                   ("internal", DEFAULT_INTERNAL), ("queued-out", DEFAULT_QUEUED_OUT))
# the shadow copies' counters by result, as /metrics and the shadow's log lines name them
SHADOW_RESULTS = {SHADOW_AGREE: "agree", SHADOW_DISAGREE: "disagree", SHADOW_FAILED: "failed",
                  SHADOW_DROPPED: "dropped"}
SHADOW_COUNTERS = tuple(SHADOW_RESULTS)
# every counter of the pool's slot: what a reload carries over to the pool's new table
POOL_COUNTERS = (REQUESTS, DEFAULT_FAILED, DEFAULT_DOWN, DEFAULT_TIMEOUT, DEFAULT_REFUSED,
                 *SHADOW_COUNTERS, HEDGED, HEDGE_WON, DEFAULT_INTERNAL, DEFAULT_QUEUED_OUT)

# --- A service's statistics slot (STATS words), word stats_start(count) + i * STATS + name ---

STATS = 40  # words per service: five cache lines
FAILURES_BY_OUTCOME = 0  # + outcome code (outcome.py; 10 words): failures that counted
#                          against it (ANSWERED, LOCAL and ABANDONED stay 0)
ANSWERS_BY_ACTION = 10  # + index in ACTIONS (8 words): its good answers by action word
LAST_CHANGE = 18  # wall-clock time it last went down or came back (before: its table's making)
DOWN_TOTAL = 19  # seconds down over the down periods that ended (the current one: on read)
LATENCY_SUM = 20  # seconds its good answers took, from the exchange's start to the answer read
LATENCY_BUCKETS = 21  # + bucket (len(BOUNDS) + 1 words): its good answers whose latency is at
#                       most BOUNDS[bucket] and above the bound before (not cumulative); the
#                       last, len(BOUNDS), holds those above the last bound (+Inf)
TURNED_AWAY = 35  # requests that wanted it while it was at its max-inflight: sent elsewhere,
#                   or waited for a slot in vain
# 36..39 unused

# the first word of an action, upper-cased: ANSWERS_BY_ACTION + its index here (`4NN text` is
# 4xx, `5NN text` 5xx; every other word, and an empty action, is `other`)
ACTIONS = ("OK", "DUNNO", "REJECT", "DEFER", "DEFER_IF_PERMIT", "4xx", "5xx", "other")
# the upper bounds (seconds) of the latency buckets
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def pool_start(count: int) -> int:
    """The first word of the pool's slot in the table of count services."""
    return count * SLOT


def stats_start(count: int) -> int:
    """The first word of the statistics slots in the table of count services."""
    return (count + 1) * SLOT


def in_flight_start(count: int) -> int:
    """The first word of the in-flight words in the table of count services."""
    return stats_start(count) + count * STATS


def load_start(count: int, workers: int) -> int:
    """The first word of the load region in the table of count services and `workers` slots:
    slot k's words for service i start at load_start + (k * count + i) * LOAD."""
    return in_flight_start(count) + workers


def table_words(count: int, workers: int = 0) -> int:
    """The words of the table of count services with in-flight and load words for `workers`
    slots."""
    return load_start(count, workers) + workers * count * LOAD


# --- A worker slot's load words for one service (LOAD words), in the load region -------------

LOAD = 2  # words per worker slot and service
LOAD_IN_FLIGHT = 0  # the worker's requests now waiting for the service's answer
LOAD_QUEUED = 1  # the worker's requests now waiting for a free slot of the service (one that
#                 waits for any service counts on the first it passed over)

# --- The worker table (workertable.py): WORKER_SLOT words per slot, word slot * WORKER_SLOT +
# name; slot k is the worker the master started in slot k, the one after the workers' the
# monitor's (only its heartbeat). The worker writes its words, the master PID and GENERATION
# after the fork, and zeroes the slot when it reaps the worker.

WORKER_SLOT = 6  # words per slot
WORKER_CLIENTS = 0  # the client connections the worker holds
WORKER_ACCEPTING = 1  # 1.0 while it accepts new connections
WORKER_HEARTBEAT = 2  # monotonic time of its last housekeeping pass (0.0: not yet)
WORKER_REQUESTS = 3  # requests it served, as of that pass
WORKER_PID = 4  # its pid, written by the master after the fork; 0.0: no worker in the slot
WORKER_GENERATION = 5  # the generation (reload) it was started for
# after the monitor's slot, one word of the master's: the workers that died unasked (/metrics)


# --- A pool's verdict cache (verdicts.py): an mmap of its own for a pool with `cache` set, a
# header of VERDICT_HEADER float64 words, then cache-size slots of VERDICT_SLOT bytes, in sets
# of VERDICT_WAYS. Made fresh at each start (an upgrade in place does not carry it): no layout
# version, nothing outside the running master's children reads it.

VERDICT_HEADER = 8  # words
VERDICT_EPOCH = 0  # the epoch of the entries in force: cache-clear adds 1, and a slot of
#                    another epoch is empty (1.0 in a fresh table, so a zeroed slot is empty;
#                    NaN in a table a reload retired: no slot is of its epoch)
VERDICT_HITS = 1  # counter: requests answered from the cache, without asking a service
VERDICT_MISSES = 2  # counter: requests that found no fresh entry and went to the services
VERDICT_STALE = 3  # counter: requests answered with a stale entry instead of the default
VERDICT_EVICTIONS = 4  # counter: entries still in use put out for another key
VERDICT_STORED = 5  # counter: answers kept
# 6..7 unused
VERDICT_COUNTERS = (("hits", VERDICT_HITS), ("misses", VERDICT_MISSES),
                    ("stale", VERDICT_STALE), ("evictions", VERDICT_EVICTIONS))
VERDICT_WAYS = 4  # slots per set: a key lives in one of the 4 slots of its set
# A slot's bytes (struct "<qddII", then the answer): the key's hash (int64), the monotonic
# time the answer came (float64), its epoch (float64), the answer's length and the CRC-32 of
# the 24 bytes before and of the answer (uint32 each), then the answer, the bytes the client
# gets (`action=...` and the empty line), at most VERDICT_ANSWER of them.
VERDICT_SLOT = 288  # bytes
VERDICT_KEY = 0  # the word (of the slot's, int64 or float64) holding the key's hash
VERDICT_STAMP = 1  # the word holding the time the answer came
VERDICT_SLOT_EPOCH = 2  # the word holding the slot's epoch
VERDICT_FIXED = 32  # bytes before the answer
VERDICT_ANSWER = VERDICT_SLOT - VERDICT_FIXED  # 256: a longer answer is not kept
