#!/usr/bin/env python3
"""Failover behaviour of a real hapolicy daemon (and of the Perl original), measured on 127.0.0.1.

    python scripts/failover.py                    # every figure, about a minute
    python scripts/failover.py --quick --json F   # fewer requests and trials (about 20 s)

"daemon" is `python -m hapolicy --listen 127.0.0.1:PORT --workers 2 ...` run from the repository;
every request to it is a new connection (so requests land on either worker). "perl" is Debian's
/usr/sbin/hapolicy in spawn style: one process whose stdin and stdout are one end of a
socketpair, fed one request at a time (its priority field is given: NAME=HOST:PORT:PRIO...).
The backends are scripts/testkit/backends.py's: a FakeBackend that answers at once or stays silent, a
Blackhole (connect never completes) and a refused port. Figures:

1. time to the first failover, primary P (prio 10) dead, secondary S (prio 20) answering:
   P silent with TIMEOUT 2 s; P blackholed with --connect-timeout 1 and TIMEOUT 30; P refusing.
   The daemon runs with --cooldown 60 and no checks, so no probe of P falls into the requests
   that follow.
2. latency (p50, p99, max) of the following requests while P stays dead (the Perl original
   pays P's timeout on every request, so it gets fewer of them: 2 s or 30 s each).
3. time to recovery once P comes back (a FakeBackend started on its port): (a) by probe,
   --check-interval 0 --cooldown 1 --cooldown-max 1 and a request every 50 ms: from the restart
   to the first answer from P; (b) by active check, --check-interval 0.5
   --check-down-interval 0.5 (and the default --check-rise 2) and no traffic: from the restart
   to the daemon's log line "service P (...) up". The restarts are spread evenly over the cool-down
   (or check) period, so the trials sample its phase reproducibly.
4. --balance hash:client_address,sender,recipient over 3 backends: each one's share of distinct
   triplets; then one is stopped: the share of keys that moved, and how many keys of the
   surviving backends moved (must be 0).
5. weights 2:1, 300 requests on 30 connections of 10 requests: the counts (and, for the
   daemon, how the connections spread over the workers).
6. every service down: two silent services (TIMEOUT 2 s each): the first request, then the
   following ones (the daemon answers the default at once, without checks and with the
   default checks; the original waits for both timeouts on every request).
7. requests waiting on a service when it is found dead: 20 requests sent 20 ms apart to a
   silent P (TIMEOUT 1 s), S behind it: when the first times out, how soon the last one is
   answered (one worker; and two workers, where the other learns it from the shared table).
8. the latency tail (p50, p99, p99.9) with and without hedging, with and without a shadow
   (a fast one, one that answers after 10 s), in one daemon (scripts/failover_tail.py);
   `--tail` runs this figure alone.

Every backend answers a distinctive action, and every answer is checked against the backend
it should come from; an answer beyond the requests that backend served is a problem too.

Stdlib only, Linux only (/proc). Every process and backend it starts is stopped at the end,
also on an error, Ctrl-C, SIGTERM or SIGHUP. Exit status: 0, 1 when a figure failed or a
sanity check did not hold (listed under "problems"), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent

import testkit.daemon
from testkit.backends import Blackhole, FakeBackend
from testkit.perl import ASK_TIMEOUT, PERL_HAPOLICY, Perl, PerlConn
from testkit.ports import HOST, refused_port
from testkit.processes import connection_owners
from testkit.protocol import PolicyClient, action_of, request
from testkit.protocol import service_spec as spec

from failover_tail import render_tail, tail_figure

SILENT_TIMEOUT = 2
BLACKHOLE_TIMEOUT = 30
CONNECT_TIMEOUT = 1
PROBE_COOLDOWN = 1.0
TICK = 0.05
CHECK_INTERVAL = 0.5
HASH_KEY = "client_address,sender,recipient"
CASES = ("silent", "blackhole", "refused")


# ---------------------------------------------------------------------------------------------
# everything started is registered here, and closed once, by its owner or at exit

class Registry:
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


def unserved(answers: Counter[str], backends: dict[str, FakeBackend]) -> dict[str, int]:
    """Answers of each backend's distinctive action beyond the requests it served (should be
    none: a proxy that makes an answer up, or caches one, shows here)."""
    excess = {action: answers[action] - len(backend.requests)
              for action, backend in backends.items()}
    return {action: n for action, n in excess.items() if n > 0}


# ---------------------------------------------------------------------------------------------
# the daemon

class Daemon(testkit.daemon.Daemon):
    """The test support's daemon runner, as this script runs it: in a session of its own, its
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


# ---------------------------------------------------------------------------------------------
# statistics and formatting

def close_all(clients: list[PolicyClient]) -> None:
    for client in clients:
        client.close()
    clients.clear()


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None, "min": min(values) if values else None}


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1.0:
        return f"{value:.3f} s"
    ms = value * 1000.0
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return lines


# ---------------------------------------------------------------------------------------------
# the figures

class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.following = 20 if self.quick else 50
        self.perl_following = {"silent": 2 if self.quick else 5, "refused": self.following,
                               "blackhole": 0 if self.quick else 1}
        self.trials = 2 if self.quick else 5
        self.keys = 300 if self.quick else 1000
        self.tmp = tempfile.mkdtemp(prefix="hapfo-", dir="/tmp")
        self.perl = Perl(self.tmp, not args.no_perl)
        self.problems: list[str] = []
        self.report: dict[str, Any] = {"failover": {c: {} for c in CASES},
                                       "recovery": {"probe": {}, "check": {}},
                                       "hash": {}, "weighted": {}, "all_down": {},
                                       "released": {}, "tail": {}}
        self._lock = threading.Lock()
        self.stopping = False  # interrupted: failures from here on are the cleanup's doing
        self.probe_answers: Counter[str] = Counter()  # of one recovery-by-probe figure

    def log(self, message: str) -> None:
        if not self.args.quiet:
            sys.stderr.write(f"failover: {message}\n")
            sys.stderr.flush()

    def problem(self, message: str) -> None:
        with self._lock:
            self.problems.append(message)
        self.log(f"PROBLEM: {message}")

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one figure failing does not stop the others
            if self.stopping:
                return
            self.problem(f"{what}: {exc!r}")
            if self.args.verbose:
                traceback.print_exc()

    def close(self) -> None:
        self.perl.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- 1 and 2 ------------------------------------------------------------------------------

    @contextmanager
    def dead_primary(self, case: str) -> Iterator[tuple[list[str], list[str], FakeBackend | None,
                                                        FakeBackend]]:
        """(daemon args, perl services, the silent backend or None, the secondary) for one kind
        of death."""
        with ExitStack() as stack:
            sec = stack.enter_context(started(FakeBackend(action="OK secondary")))
            silent = None
            extra: list[str] = ["--cooldown", "60", "--check-interval", "0"]
            if case == "silent":
                silent = stack.enter_context(started(FakeBackend(mode="silent")))
                port, timeout = silent.port, SILENT_TIMEOUT
            elif case == "blackhole":
                port = stack.enter_context(started(Blackhole())).port
                timeout = BLACKHOLE_TIMEOUT
                extra += ["--connect-timeout", str(CONNECT_TIMEOUT)]
            else:
                port, timeout = refused_port(), None
            services = [spec("P", port, 10, 1 if timeout else None, timeout),
                        spec("S", sec.port, 20)]
            daemon_args = [a for s in services for a in ("-s", s)] + extra
            yield daemon_args, services, silent, sec

    def failover_daemon(self, case: str) -> None:
        held: list[PolicyClient] = []
        owners: Counter[int] = Counter()

        def ask(attrs: dict[str, str] | None = None) -> tuple[str, float]:
            return daemon.ask(attrs, held, owners)

        with self.dead_primary(case) as (args, _, silent, sec), \
                owned(Daemon(self.tmp, args)) as daemon, owned(held, lambda: close_all(held)):
            daemon.start()
            out = self._failover(case, "daemon", ask, self.following, silent, sec)
            line = daemon.log.matching("service P (")
            out["log"] = line[0][1] if line else ""
            # the worker of the first request, then how many of the following each one served
            first = next(iter(owners))
            owners[first] -= 1
            out["following_per_worker"] = [owners[first]] + [
                n for pid, n in owners.items() if pid != first]
            self.report["failover"][case]["daemon"] = out

    def failover_perl(self, case: str) -> None:
        following = self.perl_following[case]
        if self.perl.missing:
            self.report["failover"][case]["perl"] = {"skipped": self.perl.missing}
            return
        if case == "blackhole" and not following:
            self.report["failover"][case]["perl"] = {
                "skipped": f"--quick: it costs {BLACKHOLE_TIMEOUT} s per request"}
            return
        with self.dead_primary(case) as (_, services, silent, sec), \
                owned(PerlConn(self.perl.argv(services))) as conn:
            self.report["failover"][case]["perl"] = self._failover(
                case, "perl", conn.ask, following, silent, sec)

    def _failover(self, case: str, impl: str, ask: Callable[..., tuple[str, float]],
                  following: int, silent: FakeBackend | None,
                  sec: FakeBackend) -> dict[str, Any]:
        self.log(f"{case}: {impl}: first failover, then {following} requests")
        action, first = ask()
        wrong = [action] if action != "OK secondary" else []
        times = []
        for i in range(following):
            action, took = ask({"sender": f"s{i}@example.org", "instance": f"f{i}"})
            times.append(took)
            if action != "OK secondary":
                wrong.append(action)
        if wrong:
            self.problem(f"{case}/{impl}: answers not from S: {Counter(wrong)}")
        answered_by_s = following + 1 - len(wrong)
        excess = unserved(Counter({"OK secondary": answered_by_s}), {"OK secondary": sec})
        if excess:
            self.problem(f"{case}/{impl}: {answered_by_s} answers from S, but S served "
                         f"{len(sec.requests)} requests")
        out = {"first": first, "following": summary(times), "wrong": len(wrong),
               "secondary_requests": len(sec.requests)}
        if silent is not None:
            out["primary_requests"] = len(silent.requests)
        return out

    # -- 3 ------------------------------------------------------------------------------------

    def recovery_probe(self, impl: str) -> None:
        if impl == "perl" and self.perl.missing:
            self.report["recovery"]["probe"]["perl"] = {"skipped": self.perl.missing}
            return
        port = refused_port()
        with started(FakeBackend(action="OK secondary")) as sec, ExitStack() as stack:
            services = [spec("P", port, 10), spec("S", sec.port, 20)]
            if impl == "daemon":
                daemon = stack.enter_context(owned(Daemon(self.tmp, [
                    *(a for s in services for a in ("-s", s)),
                    "--cooldown", f"{PROBE_COOLDOWN:g}", "--cooldown-max", f"{PROBE_COOLDOWN:g}",
                    "--check-interval", "0"])))
                daemon.start()
                ask = daemon.ask
            else:
                ask = stack.enter_context(owned(PerlConn(self.perl.argv(services)))).ask
            primary = FakeBackend(action="OK primary", port=port)
            stack.enter_context(owned(primary, primary.stop))
            self.log(f"recovery by probe: {impl}: {self.trials} trials")
            times: list[float] = []
            requests = 0
            self.probe_answers.clear()
            for trial in range(self.trials):
                took, sent = self._probe_trial(ask, primary, trial)
                requests += sent
                if took is None:
                    self.problem(f"recovery by probe/{impl}: P not used again within 5 s")
                else:
                    times.append(took)
                primary.stop()  # dead again for the next trial
            self.report["recovery"]["probe"][impl] = {"times": times, **summary(times),
                                                      "requests": requests}
            excess = unserved(self.probe_answers, {"OK primary": primary, "OK secondary": sec})
            if excess:
                self.problem(f"recovery by probe/{impl}: answers beyond the requests their "
                             f"backend served: {excess}")

    def _probe_trial(self, ask: Callable[..., tuple[str, float]], primary: FakeBackend,
                     trial: int) -> tuple[float | None, int]:
        """Traffic every TICK s; P restarts after one cool-down and a phase that the trials
        spread evenly over the cool-down period (and over the period of the traffic)."""
        begin = time.monotonic()
        phase = (trial + 0.5) / self.trials
        restart_at = begin + PROBE_COOLDOWN + phase * (PROBE_COOLDOWN + TICK)
        restarted = None
        next_tick = begin
        sent = 0
        while True:
            now = time.monotonic()
            if restarted is None and now >= restart_at:
                primary.start()
                restarted = time.monotonic()
            if now >= next_tick:
                action, _ = ask({"instance": f"p{trial}.{sent}"})
                done = time.monotonic()
                sent += 1
                self.probe_answers[action] += 1
                if action == "OK primary":
                    if restarted is None:
                        self.problem("recovery by probe: P answered while it was down")
                        return None, sent
                    return done - restarted, sent
                if action != "OK secondary":
                    self.problem(f"recovery by probe: unexpected answer {action!r}")
                if restarted is not None and done - restarted > 5.0:
                    return None, sent
                next_tick = max(next_tick + TICK, done)
            wake = next_tick if restarted is not None else min(next_tick, restart_at)
            time.sleep(max(0.0, wake - time.monotonic()))

    def recovery_check(self) -> None:
        port = refused_port()
        with started(FakeBackend(action="OK secondary")) as sec, ExitStack() as stack:
            daemon = stack.enter_context(owned(Daemon(self.tmp, [
                "-s", spec("P", port, 10), "-s", spec("S", sec.port, 20),
                "--check-interval", f"{CHECK_INTERVAL:g}",
                "--check-down-interval", f"{CHECK_INTERVAL:g}"])))
            daemon.start()
            primary = FakeBackend(action="OK primary", port=port)
            stack.enter_context(owned(primary, primary.stop))
            self.log(f"recovery by active check: daemon: {self.trials} trials")
            down_line, up_line = "service P (", f"service P ({HOST}:{port}) up"
            t_down, _ = daemon.log.wait(down_line + f"{HOST}:{port}) down: check:", 1)
            times = []
            for trial in range(self.trials):
                restart_at = t_down + CHECK_INTERVAL * (1 + (trial + 0.5) / self.trials)
                time.sleep(max(0.0, restart_at - time.monotonic()))
                primary.start()
                restarted = time.monotonic()
                t_up, _ = daemon.log.wait(up_line, trial + 1, timeout=5)
                times.append(t_up - restarted)
                primary.stop()
                t_down, _ = daemon.log.wait(f"{HOST}:{port}) down: check:", trial + 2, timeout=5)
            self.report["recovery"]["check"]["daemon"] = {"times": times, **summary(times)}
        self.report["recovery"]["check"]["perl"] = {"skipped": "no active checks"}

    # -- 4 ------------------------------------------------------------------------------------

    def hashing(self) -> None:
        names = ("G0", "G1", "G2")
        with ExitStack() as stack:
            backends = [stack.enter_context(started(FakeBackend(action=n))) for n in names]
            daemon = stack.enter_context(owned(Daemon(self.tmp, [
                *(a for n, b in zip(names, backends) for a in ("-s", spec(n, b.port, 10))),
                "--balance", f"hash:{HASH_KEY}", "--cooldown", "60"])))
            daemon.start()
            keys = [{"client_address": f"192.0.2.{i % 250 + 1}", "sender": f"s{i}@example.org",
                     "recipient": f"r{i}@example.net", "instance": f"h{i}"}
                    for i in range(self.keys)]
            self.log(f"hash: {len(keys)} keys, then G1 stopped, the same keys again")
            before = [daemon.ask(k)[0] for k in keys]
            backends[1].stop()
            after = [daemon.ask(k)[0] for k in keys]
        share = Counter(before)
        excess = unserved(Counter(before + after), dict(zip(names, backends)))
        if excess:
            self.problem(f"hash: answers beyond the requests their backend served: {excess}")
        moved = [(b, a) for b, a in zip(before, after) if b != a]
        survivors_moved = sum(1 for b, _ in moved if b != "G1")
        g1_kept = sum(1 for b, a in zip(before, after) if b == "G1" and a == "G1")
        wrong = sum(1 for a in before if a not in names) + sum(1 for a in after
                                                                if a not in ("G0", "G2"))
        self.report["hash"]["daemon"] = {
            "keys": len(keys), "share_before": {n: share[n] for n in names},
            "share_after": {n: Counter(after)[n] for n in names}, "stopped": "G1",
            "moved": len(moved), "moved_fraction": len(moved) / len(keys),
            "moved_to": dict(Counter(a for _, a in moved)),
            "survivors_moved": survivors_moved, "stopped_kept": g1_kept, "wrong": wrong}
        self.report["hash"]["perl"] = {"skipped": "no hash balancing"}
        if survivors_moved or g1_kept or wrong:
            self.problem(f"hash: {survivors_moved} keys of surviving servers moved, "
                         f"{g1_kept} stayed on the dead one, {wrong} wrong answers")

    # -- 5 ------------------------------------------------------------------------------------

    def weighted(self, impl: str) -> None:
        if impl == "perl" and self.perl.missing:
            self.report["weighted"]["perl"] = {"skipped": self.perl.missing}
            return
        conns, per_conn = 30, 10
        with started(FakeBackend(action="A")) as a, started(FakeBackend(action="B")) as b, \
                ExitStack() as stack:
            services = [spec("A", a.port, 10, 2), spec("B", b.port, 10, 1)]
            self.log(f"weighted: {impl}: {conns} connections x {per_conn} requests")
            counts: Counter[str] = Counter()
            owners: Counter[int] = Counter()
            if impl == "daemon":
                daemon = stack.enter_context(owned(Daemon(self.tmp, [
                    *(x for s in services for x in ("-s", s))])))
                daemon.start()
                clients: list[PolicyClient] = []
                stack.enter_context(owned(clients, lambda: close_all(clients)))
                for _ in range(conns):  # all open at once, as Postfix's smtpd processes keep them
                    clients.append(PolicyClient(HOST, daemon.port))
                for i in range(per_conn):  # one request on each connection in turn
                    for c, client in enumerate(clients):
                        answer = client.ask(request(instance=f"w{c}.{i}"), ASK_TIMEOUT)
                        counts[action_of(answer)] += 1
                        if i == 0:
                            owners[daemon.owner(client)] += 1
            else:
                for c in range(conns):
                    with owned(PerlConn(self.perl.argv(services))) as conn:
                        for i in range(per_conn):
                            counts[conn.ask({"instance": f"w{c}.{i}"})[0]] += 1
        total = conns * per_conn
        out: dict[str, Any] = {"requests": total, "connections": conns,
                               "A": counts["A"], "B": counts["B"],
                               "other": total - counts["A"] - counts["B"]}
        if impl == "daemon":
            out["connections_per_worker"] = sorted(owners.values(), reverse=True)
            if abs(counts["A"] - 2 * total / 3) > 0.03 * total:
                self.problem(f"weighted/daemon: A={counts['A']} B={counts['B']}, not 2:1")
        if out["other"]:
            self.problem(f"weighted/{impl}: {out['other']} answers from neither A nor B")
        excess = unserved(counts, {"A": a, "B": b})
        if excess:
            self.problem(f"weighted/{impl}: answers beyond the requests their backend served: "
                         f"{excess}")
        self.report["weighted"][impl] = out

    # -- 6 and 7 ------------------------------------------------------------------------------

    def all_down(self, impl: str, checks: str = "0") -> None:
        row = impl if impl == "perl" else f"daemon, --check-interval {checks}"
        if impl == "perl" and self.perl.missing:
            self.report["all_down"][row] = {"skipped": self.perl.missing}
            return
        with started(FakeBackend(mode="silent")) as s1, started(FakeBackend(mode="silent")) as s2, \
                ExitStack() as stack:
            services = [spec("S1", s1.port, 10, 1, SILENT_TIMEOUT),
                        spec("S2", s2.port, 20, 1, SILENT_TIMEOUT)]
            if impl == "daemon":
                daemon = stack.enter_context(owned(Daemon(self.tmp, [
                    *(a for s in services for a in ("-s", s)), "-d", "DEFAULTED",
                    "--cooldown", "60", "--check-interval", checks])))
                daemon.start()
                ask, following = daemon.ask, self.following
            else:
                ask = stack.enter_context(owned(PerlConn(self.perl.argv(
                    services, ("-d", "DEFAULTED"))))).ask
                following = self.perl_following["silent"]
            self.log(f"all down: {row}: {1 + following} requests")
            answers, times = [], []
            for i in range(1 + following):
                action, took = ask({"sender": f"d{i}@example.org", "instance": f"d{i}"})
                answers.append(action)
                times.append(took)
            if set(answers) != {"DEFAULTED"}:
                self.problem(f"all down/{row}: answers not the default: {Counter(answers)}")
            self.report["all_down"][row] = {
                "first": times[0], "following": summary(times[1:]),
                "live_requests": len([r for r in s1.requests + s2.requests
                                      if r.get("sender") != "hapolicy-check@localhost"])}

    def released(self, workers: int) -> None:
        with started(FakeBackend(mode="silent")) as hung, \
                started(FakeBackend(action="OK secondary")) as sec, \
                owned(Daemon(self.tmp, ["-s", spec("P", hung.port, 10, 1, 1),
                                        "-s", spec("S", sec.port, 20), "--check-interval", "0",
                                        "--cooldown", "60"], workers=workers)) as daemon:
            daemon.start()
            self.log(f"released: {workers} worker(s), 20 requests waiting on a hung P")
            done: list[tuple[float, str]] = []
            start = time.monotonic() + 0.2

            def one(n: int) -> None:
                time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
                action, _ = daemon.ask({"sender": f"w{n}@example.org"})
                done.append((time.monotonic(), action))

            threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(ASK_TIMEOUT)
        done.sort()
        if [a for _, a in done] != ["OK secondary"] * 20:
            self.problem(f"released/{workers}: answers {Counter(a for _, a in done)}")
        self.report["released"][str(workers)] = {
            "first": done[0][0] - start, "last_after_first": done[-1][0] - done[0][0],
            "without_release": 19 * 0.02}

    # -- all ----------------------------------------------------------------------------------

    def tail(self) -> None:
        self.report["tail"] = tail_figure(self.tmp, self.quick, Daemon, summary, self.log)
        rows = self.report["tail"]["rows"]
        for name, row in rows.items():
            if row["wrong"]:
                self.problem(f"tail/{name}: {row['wrong']} answers not from P or S")
        hedged, slow = rows.get("hedged"), rows.get("slow")
        if hedged and slow and not hedged["p99"] < slow["p99"] / 2:
            self.problem(f"tail: hedged p99 {hedged['p99']:.3f} s is not below half of "
                         f"{slow['p99']:.3f} s without hedging")
        if hedged and hedged["hedged"] > hedged["n"] * 15 // 100:
            self.problem(f"tail: {hedged['hedged']} hedges of {hedged['n']} requests")

    def run(self) -> None:
        if self.args.tail:
            self.guarded("tail", self.tail)
            return
        background = []
        for case in ("silent", "blackhole"):  # mostly waiting for timeouts: run alongside
            thread = threading.Thread(target=self.guarded, daemon=True, name=f"perl-{case}",
                                      args=(f"failover/{case}/perl", self.failover_perl, case))
            thread.start()
            background.append(thread)
        thread = threading.Thread(target=self.guarded, daemon=True, name="perl-all-down",
                                  args=("all down/perl", self.all_down, "perl"))
        thread.start()
        background.append(thread)
        for case in CASES:
            self.guarded(f"failover/{case}/daemon", self.failover_daemon, case)
        self.guarded("failover/refused/perl", self.failover_perl, "refused")
        for impl in ("daemon", "perl"):
            self.guarded(f"recovery by probe/{impl}", self.recovery_probe, impl)
        self.guarded("recovery by check/daemon", self.recovery_check)
        self.guarded("hash/daemon", self.hashing)
        for impl in ("daemon", "perl"):
            self.guarded(f"weighted/{impl}", self.weighted, impl)
        self.guarded("all down/daemon", self.all_down, "daemon", "0")
        self.guarded("all down/daemon, checks", self.all_down, "daemon", "5")
        for workers in (1, 2):
            self.guarded(f"released/{workers}", self.released, workers)
        self.guarded("tail", self.tail)
        for thread in background:
            while thread.is_alive():
                self.log(f"waiting for {thread.name} (the original pays every timeout)")
                thread.join(15)
        self.sanity()

    def sanity(self) -> None:
        fo = self.report["failover"]
        for case, expected in (("silent", SILENT_TIMEOUT), ("blackhole", CONNECT_TIMEOUT)):
            d = fo[case].get("daemon")
            if not d:
                continue
            if not 0.8 * expected <= d["first"] < expected + 3:
                self.problem(f"failover/{case}/daemon: first failover {d['first']:.3f} s, "
                             f"expected about {expected} s")
            p99 = d["following"]["p99"]
            if p99 is not None and p99 > d["first"] / 4:
                self.problem(f"failover/{case}/daemon: following p99 {p99:.3f} s is not far "
                             f"below the first failover")
        for row, r in self.report["all_down"].items():
            if row.startswith("daemon") and "following" in r and (
                    r["following"]["max"] or 0) > 0.05:
                self.problem(f"all down/{row}: a following request took "
                             f"{r['following']['max']:.3f} s, not the default at once")
        for workers, r in self.report["released"].items():
            if r["last_after_first"] > (0.1 if workers == "1" else 0.3):
                self.problem(f"released/{workers}: the last waiting request was answered "
                             f"{r['last_after_first']:.3f} s after the first")
        silent = fo["silent"].get("daemon")
        if silent and silent.get("primary_requests", 1) != 1:
            self.problem(f"failover/silent/daemon: P got {silent['primary_requests']} requests, "
                         f"not 1")


# ---------------------------------------------------------------------------------------------
# output

def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    if cfg.get("tail_only"):
        out = render_tail(report["tail"], fmt_s, table) if report["tail"] else []
        if report["problems"]:
            out += ["", "problems:"] + [f"  - {p}" for p in report["problems"]]
        return "\n".join(out)
    notes: list[str] = []

    def note(text: str) -> str:
        """A footnote mark for text (the same text gets the same mark)."""
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    def flush_notes(out: list[str]) -> None:
        out.extend(f"  [{i}] {text}" for i, text in enumerate(notes, 1))
        notes.clear()

    run = "quick" if cfg["quick"] else "full"
    out = [(f"hapolicy failover ({run} run, {cfg['cpus']} CPUs, Python {cfg['python']}, "
            f"127.0.0.1, {cfg['seconds']:g} s)"),
           ("  daemon: python -m hapolicy --listen 127.0.0.1:PORT --workers 2 "
            "(each request on a new connection)"),
           f"  perl:   {cfg['perl']}", ""]

    out.append("1-2. First failover, then the following requests, while P (prio 10) is dead "
               "and S (prio 20) answers at once")
    titles = {"silent": f"silent, TIMEOUT {SILENT_TIMEOUT} s",
              "blackhole": f"blackhole, TIMEOUT {BLACKHOLE_TIMEOUT} s, "
                           f"--connect-timeout {CONNECT_TIMEOUT} s",
              "refused": "refused"}
    rows = []
    for case in CASES:
        for impl in ("daemon", "perl"):
            r = report["failover"][case].get(impl)
            if r is None or "skipped" in r:
                why = note(r["skipped"]) if r else note("failed: see problems")
                rows.append([titles[case], impl, "skipped " + why, "", "", "", "", "", ""])
                continue
            f = r["following"]
            workers = ("+".join(map(str, r["following_per_worker"]))
                       if "following_per_worker" in r else "1 process")
            rows.append([titles[case], impl, fmt_s(r["first"]), str(f["n"]), fmt_s(f["p50"]),
                         fmt_s(f["p99"]), fmt_s(f["max"]), workers,
                         str(r.get("primary_requests", "-"))])
    out += table(["P is", "impl", "1st failover", "then n", "p50", "p99", "max",
                  "served by", "P saw"], rows)
    out.append("  daemon: --cooldown 60 --check-interval 0 (no probe of P during the run); "
               "the client connections stay open, as Postfix's do")
    out.append("  served by: following requests served by the first request's worker + by the "
               "other one; P saw: requests")
    out.append("  that reached the silent P, from any worker (1 + n: every request paid its "
               "timeout)")
    flush_notes(out)
    out.append("")

    out.append("3. Recovery once P is back (a backend started on its refused port); restarts "
               "spread over the period")
    methods = {"probe": f"probe: --cooldown {PROBE_COOLDOWN:g} --cooldown-max "
                        f"{PROBE_COOLDOWN:g}, a request / {TICK * 1000:.0f} ms",
               "check": f"active check: --check-(down-)interval {CHECK_INTERVAL:g}, no traffic"}
    rows = []
    for method, title in methods.items():
        for impl in ("daemon", "perl"):
            r = report["recovery"][method].get(impl)
            if r is None or "skipped" in r:
                why = note(r["skipped"]) if r else note("failed: see problems")
                rows.append([title, impl, "n/a " + why, "", "", ""])
                continue
            rows.append([title, impl, str(r["n"]), fmt_s(percentile(r["times"], 50)),
                         fmt_s(r["min"]), fmt_s(r["max"])])
    out += table(["by", "impl", "trials", "median", "min", "max"], rows)
    out.append("  probe: from the restart to P's first answer; active check: from the restart "
               "to the log line \"service P (...) up\"")
    flush_notes(out)
    out.append("")

    out.append(f"4. --balance hash:{HASH_KEY} over G0 G1 G2, then G1 stopped (daemon; the "
               "original has no hashing)")
    h = report["hash"].get("daemon")
    if not h:
        out.append("  failed: see problems")
    else:
        keys = h["keys"]
        rows = [[n, str(h["share_before"][n]), fmt_pct(h["share_before"][n], keys),
                 str(h["share_after"][n]), fmt_pct(h["share_after"][n], keys)]
                for n in ("G0", "G1", "G2")]
        out += table(["server", "keys", "share", "keys, G1 stopped", "share"], rows)
        moved_to = ", ".join(f"{k} {v}" for k, v in sorted(h["moved_to"].items()))
        out.append(f"  {keys} distinct triplets; keys moved: {h['moved']} = "
                   f"{fmt_pct(h['moved'], keys)} (G1 had {fmt_pct(h['share_before']['G1'], keys)}"
                   f"; to {moved_to}); keys of G0 and G2 moved: {h['survivors_moved']}")
    out.append("")

    out.append("5. Weights A:B = 2:1 (same prio), 300 requests on 30 connections of 10")
    rows = []
    for impl in ("daemon", "perl"):
        r = report["weighted"].get(impl)
        if r is None or "skipped" in r:
            why = note(r["skipped"]) if r else note("failed: see problems")
            rows.append([impl, "skipped " + why, "", "", ""])
            continue
        spread = ("+".join(map(str, r["connections_per_worker"])) + " connections"
                  if "connections_per_worker" in r else "1 process per connection")
        rows.append([impl, str(r["A"]), str(r["B"]), fmt_pct(r["A"], r["requests"]), spread])
    out += table(["impl", "A", "B", "A share (2:1 = 66.7 %)", "workers"], rows)
    out.append("  daemon: the 30 connections open at once, one request on each in turn")
    out.append("")

    out.append(f"6. Every service down: S1 (prio 10) and S2 (prio 20) silent, TIMEOUT "
               f"{SILENT_TIMEOUT} s each, -d DEFAULTED")
    rows = []
    for row, r in report["all_down"].items():
        if "skipped" in r:
            rows.append([row, "skipped " + note(r["skipped"]), "", "", "", "", ""])
            continue
        f = r["following"]
        rows.append([row, fmt_s(r["first"]), str(f["n"]), fmt_s(f["p50"]), fmt_s(f["p99"]),
                     fmt_s(f["max"]), str(r["live_requests"])])
    out += table(["impl", "1st answer", "then n", "p50", "p99", "max", "S1+S2 saw"], rows)
    out.append("  daemon: --cooldown 60, each request on a new connection; S1+S2 saw: live "
               "requests (not checks)")
    out.append("")

    out.append("7. 20 requests sent 20 ms apart to a silent P (TIMEOUT 1 s), S behind it (daemon)")
    rows = [[workers, fmt_s(r["first"]), fmt_s(r["last_after_first"]),
             fmt_s(r["without_release"])] for workers, r in report["released"].items()]
    out += table(["workers", "1st answered after", "last after 1st",
                  "without the release"], rows)
    if report["tail"]:
        out += ["", *render_tail(report["tail"], fmt_s, table)]
    flush_notes(out)
    if report["problems"]:
        out += ["", "problems:"] + [f"  - {p}" for p in report["problems"]]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer requests and trials, skip the original's 30 s blackhole case")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--no-perl", action="store_true", help="do not run the Perl original")
    p.add_argument("--tail", action="store_true",
                   help="only figure 8: the latency tail with and without hedging and shadows")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--verbose", action="store_true", help="tracebacks of failed figures")
    return p.parse_args(argv)


def _on_terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    started_at = time.monotonic()
    run = Run(args)
    interrupted = False
    try:
        run.run()
    except KeyboardInterrupt:
        interrupted = run.stopping = True
        sys.stderr.write("failover: interrupted: stopping everything it started\n")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        REGISTRY.close_all()
        run.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        return 130
    perl = (f"{PERL_HAPOLICY} in spawn style, one process on a socketpair, requests one at a "
            "time" + (f" ({run.perl.note})" if run.perl.note else "")
            if not run.perl.missing else f"skipped: {run.perl.missing}")
    report = {"config": {"units": "seconds", "quick": args.quick, "tail_only": args.tail, "following": run.following,
                         "perl_following": run.perl_following, "trials": run.trials,
                         "hash_keys": run.keys, "cpus": os.cpu_count(),
                         "python": sys.version.split()[0], "perl": perl,
                         "seconds": round(time.monotonic() - started_at, 1)},
              **run.report, "problems": run.problems}
    print(render(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
