"""The daemon as the figures run it: the test kit's runner, plus a timed request.

Contract: Daemon(tmp, args, workers) is testkit.daemon.Daemon in a session of its own (a
terminal's Ctrl-C does not reach it), its output in a file of tmp (daemonN.stderr, N counting
the daemons of the run); start() waits up to 20 s for its workers; ask() sends one request on
a new connection and returns (action, seconds from connect to answer); owner() names the
worker that holds a connection's server side.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import testkit.daemon
from testkit.perl import ASK_TIMEOUT
from testkit.ports import HOST
from testkit.processes import connection_owners
from testkit.protocol import PolicyClient, action_of, request


class Daemon(testkit.daemon.Daemon):
    """The test kit's daemon runner, as this script runs it: in a session of its own, its
    output in a file of tmp; plus a timed request on a new connection and who served it."""

    count = 0

    def __init__(self, tmp: str, args: list[str], workers: int = 2) -> None:
        Daemon.count += 1
        super().__init__(*args, workers=workers, new_session=True,
                         output=os.path.join(tmp, f"daemon{Daemon.count}.stderr"))

    def start(self) -> Daemon:
        return super().start(timeout=20)

    def ask(self, attrs: dict[str, str] | None = None, hold: list[PolicyClient] | None = None,
            owners: Counter[int] | None = None) -> tuple[str, float]:
        """One request on a new connection: (action, seconds from connect to answer).

        With `hold`, the connection stays open (appended to it; the caller closes it), as
        Postfix keeps its own; with `owners`, the worker that served it is counted there.
        """
        begin = time.monotonic()
        client = PolicyClient(HOST, self.port)
        try:
            answer = client.ask(request(**(attrs or {})), timeout=ASK_TIMEOUT)
            took = time.monotonic() - begin
            if owners is not None:
                owners[self.owner(client)] += 1
        finally:
            if hold is None:
                client.close()
            else:
                hold.append(client)
        return action_of(answer), took

    def owner(self, client: PolicyClient) -> int:
        """The worker holding the server side of client's connection (0: not found)."""
        return connection_owners(self.port, [client.sock], self.pids)[0]
