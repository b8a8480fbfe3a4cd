"""The verdict cache's settings: cache-key's and cache-actions' parsers, and the check of a
pool that caches as a whole (`cache_problem`), which --check-config and a start or reload run.

A cache answers a key without asking a service: right for a service without state (SPF, DNSBL,
policyd-weight), wrong for one that must see every request. A greylisting service (postgrey)
must see the retry to let it through, a rate limiter must count each message. The pool's
settings say which it is: balancing by hash, sticky instances and a shadow are for services
with state, and so are temporary answers (DEFER, 4xx: greylisting's and rate limits'); a pool
that caches with any of them is refused unless `cache-force = yes`.

A cache's slots are keyed by Python's `hash` of the request's key (tables/verdicts.py), whose
secret is random in each master unless PYTHONHASHSEED fixes it: with a known secret, whoever
chooses `sender` could search for one whose key shares another's hash (a birthday search of
about 2**32 keys) and have its answer served for the other. A pool that caches is refused
when the hash secret is fixed (`fixed_hash_seed`), whatever cache-force says.
"""

from __future__ import annotations

import os
import sys

from hapolicy.config.parsers import parse_balance
from hapolicy.config.values import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.config.records import PoolConfig

# the answers kept unless cache-actions says otherwise: final verdicts, never a temporary one
DEFAULT_CACHE_ACTIONS = r"(DUNNO|OK|PREPEND|REJECT|5[0-9][0-9])(\s|$)"
# answers that a service with state gives: a cache-actions that keeps one needs cache-force
TEMPORARY_ANSWERS = ("DEFER_IF_PERMIT Greylisted", "DEFER rate limit", "DEFER_IF_REJECT x",
                     "450 4.7.1 Greylisted", "451 4.7.1 rate limit", "452 4.5.3 too many")
FORCE = "set cache-force = yes if its services keep no state"


def parse_cache_key(text: str) -> str:
    """ATTR[/N],... as `balance = hash:` takes them (hashkey.py)."""
    text = text.strip()
    if not text:
        return text
    try:
        parse_balance("hash:" + text)
    except ConfigError:
        raise ConfigError(f"cache-key {text!r}: expected 'ATTR[/N][,ATTR...]' (N: a prefix "
                          "length, 0-32 for IPv4, 33-128 for IPv6)") from None
    return text


def parse_cache_actions(text: str) -> str:
    """A regular expression matched (case-insensitive, from the start) against the action of
    an answer; compiled here as the workers compile it."""
    text = text.strip()
    if text:
        try:
            compile_actions(text)
        except Exception as exc:  # noqa: BLE001 - re.error, OverflowError, RecursionError
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ConfigError(f"cache-actions {text!r} is not a usable regular expression: "
                              f"{why}") from None
    return text


def compile_actions(pattern: str):  # noqa: ANN201 - re is imported here, not for the type
    """cache-actions' pattern as the cache matches with it: bytes, case-insensitive."""
    import re  # here: spawn mode's start pays for it only when a pool caches

    return re.compile((pattern or DEFAULT_CACHE_ACTIONS).encode(), re.IGNORECASE)


def fixed_hash_seed() -> str:
    """PYTHONHASHSEED's value when it fixes the secret of Python's `hash` ('' when the
    secret is random, as by default): 0 turns randomization off, a number fixes it."""
    seed = "" if sys.flags.ignore_environment else os.environ.get("PYTHONHASHSEED", "")
    if not sys.flags.hash_randomization:
        return seed or "0"
    return seed if seed not in ("", "random") else ""


def cache_problem(pool: PoolConfig) -> str:
    """Why the pool's cache settings cannot be used as they are ('' when they can)."""
    if pool.cache_stale and not pool.cache:
        return "cache-stale needs cache = SECONDS"
    if not pool.cache:
        return ""
    if not pool.cache_key:
        return ("cache needs cache-key = ATTR[/N],...: the attributes the services' "
                "answers depend on")
    seed = fixed_hash_seed()
    if seed:
        return (f"cache with PYTHONHASHSEED={seed[:20]}: a fixed hash secret lets a sender be "
                "chosen whose cache key collides with another's; unset PYTHONHASHSEED")
    if pool.cache_stale and pool.cache_stale <= pool.cache:
        return f"cache-stale {pool.cache_stale:g} must be longer than cache {pool.cache:g}"
    if pool.cache_force:
        return ""
    kept = compile_actions(pool.cache_actions).match
    temporary = next((a for a in TEMPORARY_ANSWERS if kept(a.encode())), "")
    for why, on in (("balance = " + pool.balance, pool.balance.startswith("hash:")),
                    ("sticky-instance = yes", pool.sticky_instance),
                    ("shadow = " + pool.shadow, bool(pool.shadow)),
                    (f"cache-actions keeping temporary answers ({temporary})", bool(temporary))):
        if on:
            return (f"cache with {why}: its services keep state (greylisting must see the "
                    f"retry, a rate limit must count each message); {FORCE}")
    return ""
