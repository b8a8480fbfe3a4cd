"""The idle connections of one process (exchange.py's connections), per service.

A connection whose exchange ended cleanly waits here for the next one, newest last (its
`ended` is when it came back); at most MAX_IDLE per service, none older than
IDLE_SECONDS. The stacks hold the connections themselves: no pair per exchange.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.config.records import Service

    class Connection(Protocol):
        """What IdleConnections needs of a connection (exchange.py's `Connection`)."""

        service: Service
        ended: float

        def close(self, unregister: bool = True) -> None: ...

MAX_IDLE = 64  # idle connections kept per service and worker
IDLE_SECONDS = 60.0


class IdleConnections:
    """Idle connections of one process, per service, newest last (each one's `ended`: when it
    came back).

    An idle connection stays registered in the event loop for reading: if the service closes
    it (or sends anything unasked) it leaves at once, so a request rarely meets a dead
    one, and taking one costs no system call.
    """

    def __init__(self, loop: EventLoop | None = None) -> None:
        self.loop = loop
        self.stacks: dict[str, list[Connection]] = {}
        self.closed = False

    def get(self, name: str, now: float) -> Connection | None:
        """An idle connection to service `name` (or None)."""
        stack = self.stacks.get(name)
        while stack:
            conn = stack.pop()
            if now - conn.ended < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def stack(self, name: str) -> list[Connection]:
        """The idle connections to service `name`, newest last: a list kept for the process's
        life (taken from and added to in place)."""
        stack = self.stacks.get(name)
        if stack is None:
            stack = self.stacks[name] = []
        return stack

    def put(self, conn: Connection) -> bool:
        """Keep a connection (its exchange ended at conn.ended); False (and nothing done) if the
        stack is full or all are closed."""
        stack = self.stacks.get(conn.service.name)
        if stack is None:
            stack = self.stack(conn.service.name)
        if len(stack) >= MAX_IDLE or self.loop is None or self.closed:
            return False
        stack.append(conn)
        return True

    def drop(self, conn: Connection) -> None:
        """An idle connection that the service closed (or spoke on): out, and closed."""
        stack = self.stacks.get(conn.service.name, [])
        for n, pooled in enumerate(stack):
            if pooled is conn:
                del stack[n]
                break
        conn.close()

    def sweep(self, now: float) -> None:
        """Close connections idle longer than IDLE_SECONDS."""
        for stack in self.stacks.values():
            while stack and now - stack[0].ended >= IDLE_SECONDS:
                stack.pop(0).close()

    def close(self) -> None:
        self.closed = True
        for stack in self.stacks.values():
            for conn in stack:
                conn.close(unregister=self.loop is not None)
            stack.clear()  # the lists may be held (IdleConnections.stack)
        self.stacks.clear()

    def abandon(self) -> None:
        """Close every idle socket without touching the loop (a forked child's copy)."""
        self.loop = None
        self.close()
