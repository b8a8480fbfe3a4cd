"""Figure 3: the time to recovery once the dead primary P comes back on its port.

Contract: probe(run, impl) and check(run) fill run.report["recovery"]["probe"|"check"][impl]
with {"times": [seconds], **summary} ({"skipped": why} where it cannot be measured; the
original has no active checks). By probe: --check-interval 0, a cool-down of PROBE_COOLDOWN
and a request every TICK s; from P's restart to its first answer. By active check:
--check-interval and --check-down-interval CHECK_INTERVAL, no traffic; from P's restart to
the daemon's log line "service P (...) up". The restarts are spread evenly over the period, so
that the trials sample its phase reproducibly.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from typing import Callable

from testkit.backends import FakeBackend
from testkit.perl import PerlConn
from testkit.ports import HOST, refused_port
from testkit.protocol import service_spec as spec

from failoverkit.checks import unserved
from failoverkit.daemon import Daemon
from failoverkit.registry import owned, started
from failoverkit.run import Run
from failoverkit.settings import CHECK_INTERVAL, PROBE_COOLDOWN, TICK
from failoverkit.stats import summary

Ask = Callable[..., tuple[str, float]]


def probe(run: Run, impl: str) -> None:
    """Recovery by probe, of the daemon or of the original."""
    if impl == "perl" and run.perl.missing:
        run.report["recovery"]["probe"]["perl"] = {"skipped": run.perl.missing}
        return
    port = refused_port()
    with started(FakeBackend(action="OK secondary")) as sec, ExitStack() as stack:
        ask = _probing_proxy(run, impl, [spec("P", port, 10), spec("S", sec.port, 20)], stack)
        primary = FakeBackend(action="OK primary", port=port)
        stack.enter_context(owned(primary, primary.stop))
        run.log(f"recovery by probe: {impl}: {run.trials} trials")
        times: list[float] = []
        requests = 0
        answers: Counter[str] = Counter()
        for trial in range(run.trials):
            took, sent = _probe_trial(run, ask, primary, trial, answers)
            requests += sent
            if took is None:
                run.problem(f"recovery by probe/{impl}: P not used again within 5 s")
            else:
                times.append(took)
            primary.stop()  # dead again for the next trial
        run.report["recovery"]["probe"][impl] = {"times": times, **summary(times),
                                                 "requests": requests}
        excess = unserved(answers, {"OK primary": primary, "OK secondary": sec})
        if excess:
            run.problem(f"recovery by probe/{impl}: answers beyond the requests their "
                        f"backend served: {excess}")


def _probing_proxy(run: Run, impl: str, services: list[str], stack: ExitStack) -> Ask:
    """The ask of a daemon that probes P after one cool-down, or of one Perl process."""
    if impl != "daemon":
        return stack.enter_context(owned(PerlConn(run.perl.argv(services)))).ask
    daemon = stack.enter_context(owned(Daemon(run.tmp, [
        *(a for s in services for a in ("-s", s)),
        "--cooldown", f"{PROBE_COOLDOWN:g}", "--cooldown-max", f"{PROBE_COOLDOWN:g}",
        "--check-interval", "0"])))
    daemon.start()
    return daemon.ask


def _probe_trial(run: Run, ask: Ask, primary: FakeBackend, trial: int,
                 answers: Counter[str]) -> tuple[float | None, int]:
    """Traffic every TICK s; P restarts after one cool-down and a phase that the trials
    spread evenly over the cool-down period (and over the period of the traffic)."""
    begin = time.monotonic()
    phase = (trial + 0.5) / run.trials
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
            answers[action] += 1
            if action == "OK primary":
                if restarted is None:
                    run.problem("recovery by probe: P answered while it was down")
                    return None, sent
                return done - restarted, sent
            if action != "OK secondary":
                run.problem(f"recovery by probe: unexpected answer {action!r}")
            if restarted is not None and done - restarted > 5.0:
                return None, sent
            next_tick = max(next_tick + TICK, done)
        wake = next_tick if restarted is not None else min(next_tick, restart_at)
        time.sleep(max(0.0, wake - time.monotonic()))


def check(run: Run) -> None:
    """Recovery by active check, of the daemon (the original has none)."""
    port = refused_port()
    with started(FakeBackend(action="OK secondary")) as sec, ExitStack() as stack:
        daemon = stack.enter_context(owned(Daemon(run.tmp, [
            "-s", spec("P", port, 10), "-s", spec("S", sec.port, 20),
            "--check-interval", f"{CHECK_INTERVAL:g}",
            "--check-down-interval", f"{CHECK_INTERVAL:g}"])))
        daemon.start()
        primary = FakeBackend(action="OK primary", port=port)
        stack.enter_context(owned(primary, primary.stop))
        run.log(f"recovery by active check: daemon: {run.trials} trials")
        down_line, up_line = "service P (", f"service P ({HOST}:{port}) up"
        t_down, _ = daemon.log.wait(down_line + f"{HOST}:{port}) down: check:", 1)
        times = []
        for trial in range(run.trials):
            restart_at = t_down + CHECK_INTERVAL * (1 + (trial + 0.5) / run.trials)
            time.sleep(max(0.0, restart_at - time.monotonic()))
            primary.start()
            restarted = time.monotonic()
            t_up, _ = daemon.log.wait(up_line, trial + 1, timeout=5)
            times.append(t_up - restarted)
            primary.stop()
            t_down, _ = daemon.log.wait(f"{HOST}:{port}) down: check:", trial + 2, timeout=5)
        run.report["recovery"]["check"]["daemon"] = {"times": times, **summary(times)}
    run.report["recovery"]["check"]["perl"] = {"skipped": "no active checks"}
