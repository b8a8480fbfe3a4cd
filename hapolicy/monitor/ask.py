"""`ask`: a request sent through a pool by the monitor, as a worker sends a live one.

The control socket (control.py) takes `ask [--dry-run] POOL` as its command line and the request
on the lines that follow, `name=value` as Postfix sends them, ended by an empty line (or the
client's end of input). The request is framed and bounded as a live one (base/protocol.py: at most
64 KiB, 1024 attributes, lines of 8 KiB; a line without `=` refused), so that the command line
keeps its own bound and a value may hold spaces. `Asker.answer` gives the text: at once for an
error or a dry run, else a `Later` (oneshot.py) that the pool's answer fills, within the pool's
total timeout (and GRACE_SECONDS); at most MAX_ASKS asks are in flight at once.

The monitor answers it because it serves the control socket, has the configuration and maps the
shared health tables. The first ask of a pool builds the pool's dispatcher in the monitor's loop
(`request.assembly.make_dispatcher`, as a worker does: the hedger of a pool that hedges, no lane,
no shadow mirror; imported at the top, before the fork and the privilege drop), and each ask runs
as an `AskJob`: a `Job` (job.py) that notes each attempt for the answer.

What an ask counts: it is a live request, sent now to the services Postfix's requests go to, so
what it meets counts as theirs would: a failure counts against the service (and may take it
down), a good answer may bring back the service it probed, and the pool's counters (requests,
answers, failures by outcome, latency, default answers by reason) count it, so that what status,
csv and /metrics show stays what the services saw. An ask that hid a failure would show a pool
healthier than its next live request finds it. It does not count toward max-use (that is each
worker's count: the monitor has none, and `hapolicyctl workers` stays as it was), is not copied to
a shadow pool, and is sticky to nothing unless it names an `instance`: the service that answered
the last ask of an instance (the last STICKY_KEPT instances of each pool) answers the next one,
as in one SMTP transaction.
"""

from __future__ import annotations

import time

from hapolicy.base.log import clean
from hapolicy.monitor.oneshot import Later
from hapolicy.request.assembly import make_dispatcher
from hapolicy.request.job import Job
from hapolicy.request.preview import key_text, skipped, trial_order

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.base.protocol import Request
    from hapolicy.config.records import DaemonConfig, PoolConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.tables.health import HealthTable

MAX_ASKS = 4  # asks in flight at once: the control socket keeps room for other commands
GRACE_SECONDS = 1.0  # beyond the pool's total timeout, before the ask gives up waiting
STICKY_KEPT = 256  # instances remembered per pool for stickiness
USAGE = ("error: usage: ask [--dry-run] POOL, then the request's name=value lines and an "
         "empty line\n")


class AskJob(Job):
    """A Job that notes what each attempt did, for the ask's answer."""

    __slots__ = ("attempts", "hedges", "now", "starts", "why")

    def __init__(self, dispatcher: Dispatcher, request: Request, client: AskClient) -> None:
        super().__init__(dispatcher, request, client)
        self.attempts: list[tuple[int, float, str]] = []  # (service, delay, what it did)
        self.hedges: set[int] = set()  # the services a hedge asked
        self.starts: dict[int, float] = {}  # when each service was asked
        self.now = self.started  # the start of the attempt that next_attempt makes
        self.why = ""  # why the answer is the default

    def next_attempt(self, now: float) -> None:
        self.now = now
        super().next_attempt(now)

    def mark_tried(self, index: int) -> None:
        self.hedges.add(index)
        self.starts[index] = time.monotonic()
        super().mark_tried(index)

    def _delay(self, index: int) -> float:
        return time.monotonic() - self.starts.setdefault(index, self.now)

    def note_failure(self, index: int, outcome: int, reason: str) -> float:
        self.attempts.append((index, self._delay(index), f'failed="{reason}"'))
        return super().note_failure(index, outcome, reason)

    def answer_default(self, why: str, word: int) -> None:
        self.why = why
        super().answer_default(why, word)

    def finish(self, answer: bytes, service: str, default_why: str = "",
               stale: bool = False) -> None:
        if not default_why and not stale:
            self.attempts.append((self.current, self._delay(self.current),
                                  answer[:-2].decode("utf-8", "replace")))
        super().finish(answer, service, default_why, stale)

    def fail(self, exc: BaseException) -> None:
        if not self.answered:
            self.why = "internal error"
        super().fail(exc)


class AskClient:
    """The client of one ask: its answer goes to the Asker, which writes the report."""

    __slots__ = ("asker", "instance", "instance_service", "job", "later", "route")

    def __init__(self, asker: Asker, later: Later, instance: bytes, service: int) -> None:
        self.asker = asker
        self.later = later
        self.instance = instance  # the last answered transaction's, as a client connection's
        self.instance_service = service
        self.route = None
        self.job: AskJob | None = None

    def deliver(self, answer: bytes) -> None:
        self.asker.answered(self, answer)


class Asker:
    """The monitor's asks (see the module doc); `answer` is the control socket's `ask`."""

    def __init__(self, loop: EventLoop, config: DaemonConfig,
                 health: Mapping[str, HealthTable], log: Logger) -> None:
        self.loop = loop
        self.config = config
        self.health = health
        self.log = log
        self.dispatchers: dict[str, Dispatcher] = {}  # by pool, made at its first ask
        self.sticky: dict[str, dict[bytes, int]] = {}  # by pool: instance -> service answered
        self.in_flight = 0

    def dispatcher(self, pool: PoolConfig) -> Dispatcher:
        found = self.dispatchers.get(pool.name)
        if found is None:
            found = self.dispatchers[pool.name] = make_dispatcher(
                self.loop, pool, self.health[pool.name], self.log,
                log_requests=self.config.log_requests, verbose=self.config.verbose, lane=False)
        return found

    def answer(self, line: str, request: Request) -> str | Later:
        """The answer of `ask [--dry-run] POOL` (line) for request."""
        words = line.split()[1:]
        dry = "--dry-run" in words
        names = [w for w in words if w != "--dry-run"]
        if len(names) != 1 or names[0].startswith("-"):
            return USAGE
        pool = next((p for p in self.config.pools if p.name == names[0]), None)
        if pool is None or pool.name not in self.health:
            return f"error: no pool {names[0][:80]!r}\n"
        if request.error:
            return (f"error: request refused ({request.error}); Postfix would get the "
                    f"default action={clean(pool.default_action)}\n")
        if len(request.raw) <= 2:  # as Dispatcher.submit: nobody asked, nothing counted
            return (f'pool={pool.name} service=none why="empty request"\n'
                    f"answer: {default_text(pool, 'empty request')}\n")
        d = self.dispatcher(pool)
        instance = request.instance() if d.sticky else b""
        service = self.sticky.get(pool.name, {}).get(instance, -1) if instance else -1
        if dry:
            return dry_run(d, request, service)
        if self.in_flight >= MAX_ASKS:
            return f"error: {MAX_ASKS} asks in flight already; ask again once they are answered\n"
        later = Later(pool.total_timeout + GRACE_SECONDS,
                      f"error: no answer within {pool.total_timeout + GRACE_SECONDS:g}s\n"
                      .encode())
        client = AskClient(self, later, instance if service >= 0 else b"", service)
        self.send(d, request, client)
        return later

    def send(self, d: Dispatcher, request: Request, client: AskClient) -> None:
        """Dispatcher.submit's way for a Job, without counting toward max-use."""
        self.in_flight += 1
        d.in_flight += 1
        d.counts[d.requests_word] += 1.0
        client.job = job = AskJob(d, request, client)
        try:
            job.begin()
        except Exception as exc:  # noqa: BLE001 - it costs this ask, not the monitor
            job.fail(exc)

    def answered(self, client: AskClient, answer: bytes) -> None:
        """The pool answered an ask: remember its instance's service, write the report."""
        self.in_flight -= 1
        job = client.job
        assert job is not None
        pool = job.d.config
        if client.instance:  # Job.on_exchange_done set it: a service answered the instance
            kept = self.sticky.setdefault(pool.name, {})
            kept.pop(client.instance, None)
            kept[client.instance] = client.instance_service
            if len(kept) > STICKY_KEPT:
                del kept[next(iter(kept))]
        try:
            text = report(job, answer)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the monitor
            self.log.error(f"control socket: ask {pool.name}: report failed: {exc!r}")
            text = "error: internal error\n"
        client.later(text.encode())


def report(job: AskJob, answer: bytes) -> str:
    """The lines of an ask's answer: one per service asked (or why none), then the pool's."""
    d = job.d
    pool = d.config
    lines = []
    for index, delay, what in job.attempts:
        service = d.services[index]
        hedge = " hedge=yes" if index in job.hedges else ""
        what = what if what.startswith("failed=") else f"action={what[7:]}"
        lines.append(f"pool={pool.name} service={service.name} address={service.address}"
                     f"{hedge} delay={delay:.3f}s {clean(what)}\n")
    if not job.attempts:
        lines.append(f'pool={pool.name} service=none why="{job.why}"\n')
    delay = f"delay={time.monotonic() - job.started:.3f}s"
    if job.why:
        lines.append(f"answer: {default_text(pool, job.why, delay)}\n")
    else:
        action = clean(answer[7:-2].decode("utf-8", "replace"))
        lines.append(f"answer: service={d.services[job.current].name} {delay} action={action}\n")
    return "".join(lines)


def default_text(pool: PoolConfig, why: str, delay: str = "") -> str:
    """The pool's default answer and why: `default="why" [delay=...] action=...`."""
    return f'default="{why}" {delay + " " if delay else ""}action={clean(pool.default_action)}'


def dry_run(d: Dispatcher, request: Request, sticky: int) -> str:
    """The order the request would try the pool's services in, read without asking any."""
    pool = d.config
    key = d.hash_key(request) if d.hash_key is not None else None
    order = trial_order(d.selector, time.monotonic(), key, sticky)
    head = f"pool={pool.name} balance={pool.balance}"
    shown = key_text(pool.balance, request)
    if shown:
        head += f' key="{clean(shown)}"'
    names = [service.name for service in d.services]
    lines = [head + "\n", "order: " + (" ".join(names[i] + (f"[{why}]" if why else "")
                                                for i, why in order) or "none") + "\n"]
    left = skipped(d.selector, order)
    if left:
        lines.append("skipped: " + " ".join(f"{names[i]}[{why}]" for i, why in left) + "\n")
    if order:
        lines.append("answer: the first of the order to answer; if none, "
                     f"{default_text(pool, 'all services failed')}\n")
    else:
        lines.append(f"answer: {default_text(pool, 'all services down')}\n")
    return "".join(lines)
