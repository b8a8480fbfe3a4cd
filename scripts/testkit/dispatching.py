"""An in-process dispatcher for tests: an event loop of ours, a client object that records what
it is delivered and a logger that keeps its lines (`Run`, `Client`; the log is logs.KeptLog)."""

from __future__ import annotations

import time

from hapolicy.base.eventloop import EventLoop
from hapolicy.base.protocol import RequestFramer
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import PoolConfig
from hapolicy.request.assembly import make_dispatcher
from hapolicy.tables.health import HealthTable
from testkit.logs import KeptLog


class Client:
    """A client connection as the dispatcher sees it: the answers it was delivered."""

    def __init__(self) -> None:
        self.instance = b""
        self.instance_service = -1
        self.answers: list[bytes] = []

    def deliver(self, answer: bytes) -> None:
        self.answers.append(answer)


class Run:
    """A dispatcher for some services; `ask` answers one request. settings: the pool's,
    and the process's `log_requests` and `verbose`."""

    def __init__(self, *specs: str, log_requests: bool = False, verbose: bool = False,
                 **settings) -> None:
        self.config = PoolConfig(services=tuple(parse_service(s) for s in specs), **settings)
        self.loop = EventLoop()
        self.health = HealthTable(len(specs), shared=False)
        self.log = KeptLog()
        self.dispatcher = make_dispatcher(self.loop, self.config, self.health, self.log,
                                          log_requests=log_requests, verbose=verbose)

    def ask(self, data: bytes, client: Client | None = None) -> tuple[bytes, float]:
        """(the one answer delivered, seconds taken)."""
        client = client or Client()
        [framed] = RequestFramer().feed(data)
        started = time.monotonic()
        self.dispatcher.submit(framed, client)
        while not client.answers:
            assert time.monotonic() - started < 40, "never answered"
            self.loop.run_once(0.1)
        took = time.monotonic() - started
        for _ in range(3):  # nothing more comes: exactly one answer
            self.loop.run_once(0.01)
        assert len(client.answers) == 1, client.answers
        assert self.dispatcher.in_flight == 0
        answer = client.answers.pop()
        return answer, took

    def answer(self, data: bytes, client: Client | None = None) -> bytes:
        """The first answer delivered to one request, as soon as it comes (no pause after it,
        unlike `ask`: for tests of many requests)."""
        client = client or Client()
        [framed] = RequestFramer().feed(data)
        self.dispatcher.submit(framed, client)
        started = time.monotonic()
        while not client.answers:
            assert time.monotonic() - started < 20, "never answered"
            self.loop.run_once(0.05)
        return client.answers[0]

    def close(self) -> None:
        self.dispatcher.close()
        self.loop.close()
