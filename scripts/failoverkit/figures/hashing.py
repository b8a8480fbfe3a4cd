"""Figure 4: --balance hash over three backends, then one of them stopped (daemon only).

Contract: hashing(run) sends run.keys distinct (client_address, sender, recipient) triplets
to G0, G1, G2, stops G1 and sends the same triplets again; it fills run.report["hash"]["daemon"]
with each backend's share before and after, the keys that moved and where to, and how many
keys of the surviving backends moved (must be 0: a problem otherwise); the original has no
hashing ({"skipped": why}).
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

from testkit.backends import FakeBackend
from testkit.protocol import service_spec as spec

from failoverkit.checks import unserved
from failoverkit.daemon import Daemon
from failoverkit.registry import owned, started
from failoverkit.run import Run
from failoverkit.settings import HASH_KEY

NAMES = ("G0", "G1", "G2")


def hashing(run: Run) -> None:
    """The keys' backends before and after G1 stops."""
    with ExitStack() as stack:
        backends = [stack.enter_context(started(FakeBackend(action=n))) for n in NAMES]
        daemon = stack.enter_context(owned(Daemon(run.tmp, [
            *(a for n, b in zip(NAMES, backends) for a in ("-s", spec(n, b.port, 10))),
            "--balance", f"hash:{HASH_KEY}", "--cooldown", "60"])))
        daemon.start()
        keys = [{"client_address": f"192.0.2.{i % 250 + 1}", "sender": f"s{i}@example.org",
                 "recipient": f"r{i}@example.net", "instance": f"h{i}"}
                for i in range(run.keys)]
        run.log(f"hash: {len(keys)} keys, then G1 stopped, the same keys again")
        before = [daemon.ask(k)[0] for k in keys]
        backends[1].stop()
        after = [daemon.ask(k)[0] for k in keys]
    excess = unserved(Counter(before + after), dict(zip(NAMES, backends)))
    if excess:
        run.problem(f"hash: answers beyond the requests their backend served: {excess}")
    _record(run, before, after)


def _record(run: Run, before: list[str], after: list[str]) -> None:
    """The figure from the answers to the same keys before and after G1 stopped."""
    share = Counter(before)
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    survivors_moved = sum(1 for b, _ in moved if b != "G1")
    g1_kept = sum(1 for b, a in zip(before, after) if b == "G1" and a == "G1")
    wrong = sum(1 for a in before if a not in NAMES) + sum(1 for a in after
                                                           if a not in ("G0", "G2"))
    run.report["hash"]["daemon"] = {
        "keys": len(before), "share_before": {n: share[n] for n in NAMES},
        "share_after": {n: Counter(after)[n] for n in NAMES}, "stopped": "G1",
        "moved": len(moved), "moved_fraction": len(moved) / len(before),
        "moved_to": dict(Counter(a for _, a in moved)),
        "survivors_moved": survivors_moved, "stopped_kept": g1_kept, "wrong": wrong}
    run.report["hash"]["perl"] = {"skipped": "no hash balancing"}
    if survivors_moved or g1_kept or wrong:
        run.problem(f"hash: {survivors_moved} keys of surviving servers moved, "
                    f"{g1_kept} stayed on the dead one, {wrong} wrong answers")
