"""Figure 7: requests waiting on a service when it is found dead are released at once.

Contract: released(run, workers) sends 20 requests, 20 ms apart, to a daemon of `workers`
workers whose P (prio 10, TIMEOUT 1 s) is silent and S (prio 20) answers at once; it fills
run.report["released"][str(workers)] with when the first was answered (from the first send),
how long after it the last was, and what the last would wait without the release (19 x 20 ms).
Every answer must be S's. With two workers, the other one learns of P's death from the shared
table.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from testkit.backends import FakeBackend
from testkit.perl import ASK_TIMEOUT
from testkit.protocol import service_spec as spec

from failoverkit.daemon import Daemon
from failoverkit.registry import owned, started
from failoverkit.run import Run

REQUESTS, APART = 20, 0.02


def released(run: Run, workers: int) -> None:
    """When the waiting requests are answered, the first and the last."""
    with started(FakeBackend(mode="silent")) as hung, \
            started(FakeBackend(action="OK secondary")) as sec, \
            owned(Daemon(run.tmp, ["-s", spec("P", hung.port, 10, 1, 1),
                                   "-s", spec("S", sec.port, 20), "--check-interval", "0",
                                   "--cooldown", "60"], workers=workers)) as daemon:
        daemon.start()
        run.log(f"released: {workers} worker(s), 20 requests waiting on a hung P")
        start = time.monotonic() + 0.2
        done = _send_apart(daemon, start)
    done.sort()
    if [a for _, a in done] != ["OK secondary"] * REQUESTS:
        run.problem(f"released/{workers}: answers {Counter(a for _, a in done)}")
    run.report["released"][str(workers)] = {
        "first": done[0][0] - start, "last_after_first": done[-1][0] - done[0][0],
        "without_release": (REQUESTS - 1) * APART}


def _send_apart(daemon: Daemon, start: float) -> list[tuple[float, str]]:
    """REQUESTS requests, one thread each, sent APART s apart from start: (answered, action)."""
    done: list[tuple[float, str]] = []

    def one(n: int) -> None:
        time.sleep(max(0.0, start + n * APART - time.monotonic()))
        action, _ = daemon.ask({"sender": f"w{n}@example.org"})
        done.append((time.monotonic(), action))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ASK_TIMEOUT)
    return done
