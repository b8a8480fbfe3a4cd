"""The common request without a Job: one whole request, the first priority up, an idle connection.

Most requests of a pool take the same way: the client's read is one whole request, every
service of the first priority group is up, the pick (the transaction's sticky service, or
weighted round robin in the group, or the group's one service) has an idle connection in the
pool, and the answer comes back whole in one read. `Lane` runs exactly that way with no `Job`,
no `Selector.pick` and no callback chain: `Lane.take` makes the pick as `Selector.pick` would
make it then (a balanced group's round robin with the selector's `by_weight` and `commit`, the
one place round robin is kept), sends the request on the idle connection (which then carries
the client, the request and its instance), and that connection's event handler
(`LaneConnection._on_event`) reads the whole answer, puts the connection back, counts the
answer as `Dispatcher.count_answer` does (those twins inlined rather than called) and
writes it to the client with `ClientConnection.deliver`.

In a turn of several events (`EventLoop.gathering`) the lane's exchanges write nothing at once
(one that becomes a `Job` is the general path's, which does): `take` leaves the request QUEUED
on its connection, the handler leaves the answer with its client still busy, and `Lane.flush`,
once the turn's handlers have all run (`EventLoop.at_turn_end`), writes the answers, then sends
the requests, each as it would have been at once. A write that wakes a peer (the service,
smtpd) lets the kernel switch to it when the call returns; gathered, the turn's reads and rules
run together and the peers are woken together, which on a busy machine costs less CPU per
request and cuts the tail (docs/performance.md has the figures). A QUEUED connection whose
exchange ended meanwhile (released, closed) is not sent on; an event of it in the turn waits
for the next one. In a turn of one event there is nothing to gather: both go at once.

Anything else goes the general way, decided before anything is done, so the general path
sees the request as if the lane did not exist: `take` returns False, with nothing written
anywhere, when the pool's settings (`qualifies`) or the request's conditions do not allow the
lane (a member of the group down, disabled or drained; a transaction sticky to another
group's service; no fresh idle connection to the pick), and an exchange of the lane that does
not end in a whole answer (a failure, a timeout, an abandon, a split or odd answer) becomes a
`Job` at that point (`LaneConnection._resume`, `Job.resumed`), with the service marked tried,
the request's own start and deadline, and the exchange's outcome: failover, health, counters
and the default answer are the general path's from there on. tests/unit/request/test_lane.py
holds the lane to what the general path gives, request for request.

The lane is attached to its dispatcher from above by the dispatcher's builder (assembly.py),
the one module that imports this one; the dispatcher's module does not know it.
"""

from __future__ import annotations

from bisect import bisect_left

from hapolicy.backend.exchange import DEADLINE_TICK, IDLE, QUEUED, READING, Connection
from hapolicy.backend.idle import IDLE_SECONDS, MAX_IDLE
from hapolicy.base.protocol import (
    MAX_ANSWER_BYTES,
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    SHORT_REQUEST_BYTES,
    SKELETON_DELETES,
    Request,
)
from hapolicy.request.job import Job
from hapolicy.tables.layout import (
    ADMIN,
    ANSWERS,
    BOUNDS,
    DOWN_UNTIL,
    DRAIN,
    LATENCY_BUCKETS,
    LATENCY_SUM,
    SLOT,
)
from hapolicy.tables.stats import CACHE_MAX, FIRST_BOUND, action_offset

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.backend.exchange import Backends
    from hapolicy.config.records import Service
    from hapolicy.request.client import ClientConnection
    from hapolicy.request.dispatch import Dispatcher

KNOWN_ANSWER_BYTES = 64  # longer answers are not remembered by the lane (they often vary)


def qualifies(d: Dispatcher) -> bool:
    """Whether pool settings leave the lane's requests nothing to do beyond one exchange with
    the pick of the first priority group: no hashing, least-latency, max-inflight, hedge,
    shadow, fail-answer, cache, per-request log line or verbose logging asks for more."""
    config = d.config
    return (d.hash_key is None and d.load is None and not config.hedge and not config.shadow
            and d.fail_answer is None and not d.log_requests and not d.verbose
            and not config.cache)


class Member:
    """A service of the lane's priority group, as the lane reads, picks and counts it."""

    __slots__ = ("answers_word", "base", "buckets_word", "index", "latency_word", "limit", "stack",
                 "stats", "step")

    def __init__(self, d: Dispatcher, index: int) -> None:
        self.index = index
        # an attempt's limit from its start, as Connection.run sets it
        self.limit = min(d.services[index].timeout, d.total_timeout)
        self.base = index * SLOT  # its health words
        self.answers_word = self.base + ANSWERS
        self.stats = d.stats[index]  # its statistics (an action's offset is from here)
        self.latency_word = self.stats + LATENCY_SUM
        self.buckets_word = self.stats + LATENCY_BUCKETS
        self.step = d.selector.step[index]  # 0.0 alone in the group: no round robin
        # the stack of idle connections to the service (IdleConnections.stack), kept for ever
        self.stack = d.backends.idle.stack(d.services[index].name)


class Lane:
    """The lane of one dispatcher (made only when `qualifies`)."""

    __slots__ = ("actions", "answered", "backends", "d", "f", "flush_at_end", "group",
                 "in_flight", "known_answers", "loop", "member_named", "member_of", "members",
                 "only", "requests_word", "selector", "sends", "sticky", "total_timeout")

    def __init__(self, d: Dispatcher) -> None:
        self.d = d
        self.selector = d.selector
        self.group = d.selector.groups[0]  # the members' indexes, in order
        self.members = tuple(Member(d, i) for i in self.group)
        self.member_of = {m.index: m for m in self.members}
        self.member_named = {d.services[m.index].name: m for m in self.members}
        self.only = self.members[0] if len(self.members) == 1 else None  # nothing to pick
        self.f = d.counts
        self.actions = d.actions
        self.requests_word = d.requests_word
        self.total_timeout = d.total_timeout
        self.sticky = d.sticky
        self.backends = d.backends
        self.in_flight = d.backends.in_flight
        self.loop = d.backends.loop
        # what this turn's exchanges have to write, written together at its end (`flush`):
        # the connections whose request is QUEUED, the clients whose answer waits with it
        self.sends: list[LaneConnection] = []
        self.answered: list[tuple[ClientConnection, bytes]] = []
        self.flush_at_end = self.flush  # bound once
        # whole_answer's findings for the short answers read so far, by the bytes read
        self.known_answers: dict[bytes, tuple[int, bytes]] = {}

    def connection(self, backends: Backends, service: Service) -> LaneConnection:
        """A new connection of the dispatcher (its Backends' connection_type): the lane's
        member for its service is known from the start (None outside the lane's group)."""
        return LaneConnection(backends, service, self, self.member_named.get(service.name))

    def whole_answer(self, data: bytes) -> tuple[int, bytes] | None:
        """For a service's read that is one whole answer as Connection._on_event takes it (LF
        line ends, a non-empty action first), the offset of its action's count
        (ANSWERS_BY_ACTION + k, as Dispatcher.count_answer finds it) and what the client gets
        (the action line); None for any other read. A short one is remembered in
        known_answers (bounded)."""
        size = len(data)
        end = data.find(b"\n\n")
        line = data.find(b"\n")
        if (end != size - 2 or line < 8 or not data.startswith(b"action=")
                or size > MAX_ANSWER_BYTES or 13 in data):
            return None
        actions = self.actions
        offset = actions.get(data[7:line if line < 23 else 23])  # noqa: FURB136 (no call)
        if offset is None:
            offset = action_offset(actions, data[:line])
        # more lines than the action: only the action goes to the client
        known = (offset, data if line == end else data[:line] + b"\n\n")
        if size <= KNOWN_ANSWER_BYTES and len(self.known_answers) < CACHE_MAX:
            self.known_answers[data] = known
        return known

    def take(self, client: ClientConnection, data: bytes, now: float) -> bool:
        """Send data, a client's read while it has nothing in progress, on an idle connection
        to the service the general path would pick now, when data is one whole request and
        nothing else is to be done; False, with nothing done, when not."""
        f = self.f
        only = self.only
        if only is not None:
            base = only.base
            if f[base + DOWN_UNTIL] + f[base + ADMIN] != 0.0 or f[base + DRAIN]:
                return False  # down, disabled or drained: the pick decides
        else:
            for member in self.members:
                base = member.base
                if f[base + DOWN_UNTIL] + f[base + ADMIN] != 0.0 or f[base + DRAIN]:
                    return False
        size = len(data)
        # what RequestFramer.whole takes and does not refuse, tested as it does on the read's
        # skeleton: its first empty line ends it, no line lacks a `=`, no CR
        if (size < 3 or size > MAX_LINE_BYTES or data[-1] != 10 or data[-2] != 10
                or client.framer.skipping):
            return False
        skeleton = data.translate(None, SKELETON_DELETES)
        if (skeleton[0] == 10 or skeleton.find(b"\n\n") != len(skeleton) - 2 or 13 in skeleton
                or size > SHORT_REQUEST_BYTES and skeleton.count(10) > MAX_ATTRIBUTES + 1):
            return False
        sticky = -1
        instance = b""
        if self.sticky:  # Request.instance, on bytes with LF line ends, and Job's test
            pos = data.find(b"\ninstance=")
            if pos >= 0:
                instance = data[pos + 10:data.find(b"\n", pos + 10)]
            elif data.startswith(b"instance="):
                instance = data[9:data.find(b"\n")]
            if instance and instance == client.instance:
                sticky = client.instance_service
        if only is not None:
            if sticky >= 0 and sticky != only.index:
                return False  # the transaction is another group's service's
            member = only
        elif sticky >= 0:
            member = self.member_of.get(sticky)  # type: ignore[assignment]
            if member is None:
                return False
        else:  # the round robin of the whole group, every member up (Selector.pick's)
            member = self.member_of[self.selector.by_weight(self.group)]
        return self._start(member, client, data, instance, now)

    def _start(self, member: Member, client: ClientConnection, data: bytes, instance: bytes,
               now: float) -> bool:
        """Take the request to member, the pick, when a fresh idle connection to it waits
        (else False, with nothing done): count the pick and the request, and send it on that
        connection, at once or at the end of a turn of several events (`flush`)."""
        stack = member.stack
        if not stack or now - stack[-1].ended >= IDLE_SECONDS:
            return False  # no fresh idle connection: the general path connects
        if member.step:
            self.selector.commit(member.index)
        conn: LaneConnection = stack.pop()  # type: ignore[assignment]
        d = self.d
        d.requests += 1
        if d.requests == d.max_use:
            d.on_max_use()
        d.in_flight += 1
        self.f[self.requests_word] += 1.0
        client.busy = True
        conn.client = client  # its lane and member are its own already (`connection`)
        conn.request = data
        conn.instance = instance
        # Connection.run's way with a pooled connection, inline; its fallbacks as it has them
        # (and its answer is b"" already: every exchange ends with it so)
        conn.payload = data
        conn.deadline = now + self.total_timeout
        conn.on_done = conn.resume
        conn.started = now
        conn.reused = True
        conn.limit = now + member.limit
        self.in_flight.add(conn)
        backends = self.backends
        if backends.tick is None:
            backends.tick = self.loop.call_later(DEADLINE_TICK, backends.on_tick)
        if not self.loop.gathering:  # the turn's one event: nothing to gather
            conn.send_payload()
            return True
        conn.state = QUEUED  # (its `sent` is not read before send_payload sets it)
        if not self.sends and not self.answered:  # the turn's first: flush at its end
            self.loop.at_turn_end(self.flush_at_end)
        self.sends.append(conn)
        return True

    def hold(self, client: ClientConnection, answer: bytes) -> None:
        """In a turn of several events: client's answer is written at the turn's end; the
        client stays busy until then."""
        if not self.sends and not self.answered:  # the turn's first: flush at its end
            self.loop.at_turn_end(self.flush_at_end)
        self.answered.append((client, answer))

    def revive(self, member: Member) -> None:
        """A good answer of a member marked down: Health.ok may bring it back
        (Dispatcher.count_answer's)."""
        try:
            self.d.health.ok(member.index)
        except Exception as exc:  # noqa: BLE001 - the answer is good: it goes out
            self.d.internal_error(exc, answered=True)

    def flush(self) -> None:
        """At the end of a turn of several events: write the answers read in it, then send the
        requests taken in it (answers first: a client answered sooner asks again sooner)."""
        # each list is taken whole before its items are acted on, and an exception of one item
        # is that item's: what the others wait for goes out, and the next turn flushes again
        answered = self.answered
        if answered:
            self.answered = []
            d = self.d
            d.in_flight -= len(answered)
            for client, data in answered:
                try:
                    client.deliver(data)
                except Exception as exc:  # noqa: BLE001 - the other clients' answers go out
                    d.internal_error(exc, answered=True)
        sends = self.sends
        if sends:
            self.sends = []
            for conn in sends:
                if conn.state == QUEUED:  # else it ended meanwhile (abandoned, closed)
                    try:
                        conn.send_payload()
                    except Exception as exc:  # noqa: BLE001 - its deadline ends it (resume)
                        self.d.internal_error(exc, answered=True)


class LaneConnection(Connection):
    """A connection of a dispatcher with a lane: one of the lane's exchanges (`client` set)
    ends here when its answer is read whole in one piece; anything else is Connection's."""

    __slots__ = ("client", "instance", "lane", "member", "request", "resume")

    def __init__(self, backends: Backends, service: Service, lane: Lane,
                 member: Member | None) -> None:
        super().__init__(backends, service)
        self.client: ClientConnection | None = None  # of the lane's exchange in progress
        self.lane = lane
        self.member = member  # its service, as the lane counts it (None: not the lane's)
        self.request = b""  # its request
        self.instance = b""  # and the request's instance (b"" when not sticky)
        self.resume = self._resume  # made once: the on_done of every exchange of the lane

    def _on_event(self, mask: int) -> None:
        client = self.client
        if client is None or self.state != READING:
            Connection._on_event(self, mask)
            return
        try:
            data = self.sock.recv(65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._io_error(exc)
            return
        lane = self.lane
        # after a part of an answer, or when not one whole answer in one read: Connection's;
        # an answer read before is known whole (most are one of a few: `action=DUNNO`)
        known = None if self.answer else (lane.known_answers.get(data)
                                          or lane.whole_answer(data))
        if known is None:
            self._received(data)
            return
        offset, data = known
        member: Member = self.member  # type: ignore[assignment]
        self.client = None
        self.on_done = None
        self.payload = b""
        lane.in_flight.discard(self)
        self.ended = now = lane.loop.now  # the poll's: the turn's handlers took our time
        stack = member.stack
        if len(stack) < MAX_IDLE:  # IdleConnections.put (not closed: that ends what is in flight)
            stack.append(self)
            self.state = IDLE
        else:
            self.close()
        f = lane.f  # Dispatcher.count_answer's
        f[member.answers_word] += 1.0
        elapsed = now - self.started
        f[member.latency_word] += elapsed
        f[member.buckets_word
          + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1.0
        f[member.stats + offset] += 1.0
        if f[member.base + DOWN_UNTIL]:  # it was down: Health.ok may bring it back
            lane.revive(member)
        if self.instance:  # Job.on_exchange_done: the transaction sticks to the service
            client.instance = self.instance
            client.instance_service = member.index
        if lane.loop.gathering:
            lane.hold(client, data)
            return
        client.deliver(data)  # the turn's one event: nothing to gather
        lane.d.in_flight -= 1

    def _resume(self, action: bytes, outcome: int, reason: str) -> None:
        """The lane's exchange ended another way: the general path from here, as though a
        Job had made that attempt."""
        client = self.client
        lane = self.lane
        index = self.member.index  # type: ignore[union-attr]
        self.client = None
        job = Job.resumed(lane.d, Request(self.request), client,  # type: ignore[arg-type]
                          index, self)
        job.on_exchange_done(action, outcome, reason)
