"""Everything a run starts is registered here, and closed once: by its owner or at exit.

Contract: REGISTRY.push(closer) returns a token; REGISTRY.run(token) calls that closer once
(later calls do nothing); REGISTRY.close_all() calls every closer not yet called, newest first,
and goes on past one that raises (it says so on stderr). owned() and started() register an
object for the duration of a with block; close_clients() closes a list of PolicyClients.
Thread-safe: the figures run in several threads.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from testkit.protocol import PolicyClient


class Registry:
    """Closers by token; each one called at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Callable[[], None]] = {}
        self._next = 0

    def push(self, closer: Callable[[], None]) -> int:
        with self._lock:
            self._next += 1
            self._items[self._next] = closer
            return self._next

    def run(self, token: int) -> None:
        with self._lock:
            closer = self._items.pop(token, None)
        if closer is not None:
            closer()

    def close_all(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                token = max(self._items)
            try:
                self.run(token)
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                sys.stderr.write(f"failover: cleanup: {exc!r}\n")


REGISTRY = Registry()


@contextmanager
def owned(obj: Any, closer: Callable[[], None] | None = None) -> Iterator[Any]:
    """Register obj's closer (default obj.close) for the duration; close it on the way out."""
    token = REGISTRY.push(closer or obj.close)
    try:
        yield obj
    finally:
        REGISTRY.run(token)


@contextmanager
def started(obj: Any) -> Iterator[Any]:
    """Start a FakeBackend or Blackhole; stop it on the way out (and at exit)."""
    obj.start()
    with owned(obj, obj.stop):
        yield obj


def close_clients(clients: list[PolicyClient]) -> None:
    """Close every client of the list and empty it."""
    for client in clients:
        client.close()
    clients.clear()
