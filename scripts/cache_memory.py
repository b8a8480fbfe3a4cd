#!/usr/bin/python3
"""The verdict cache's memory under distinct keys: a daemon whose pool caches (cache-size
10000), before the bench's backend, sent --keys requests that each have a key never seen (every
one a miss, its answer kept, the oldest of its set put out), the workers' RSS sampled as the
keys go by. The cache is a table of fixed slots made before the fork: once its slots are
touched, a worker's RSS must stay flat however many keys pass (docs/configuration.md, The
verdict cache). tests/unit/tables/test_verdicts.py holds the table to it in-process; this is
the figure through a live daemon, too long for the test suite (about a minute a million keys
on two cores).

    python3 scripts/cache_memory.py [--keys 1000000] [--workers 2] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from benchkit.loadgen import Generators
from benchkit.procs import Children, children_of, memory_kib
from benchkit.servers import daemon_argv, start_backend
from benchkit.tree import REPO, child_env, hapolicy_missing
from benchkit.wire import wait_answering
from testkit.ports import HOST, free_port

CACHE = ("--sticky-instance", "no", "--cache", "300", "--cache-size", "10000",
         "--cache-key", "client_address,helo_name,sender", "--max-use", "1000000000")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct keys to send")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    return parser.parse_args(argv)


def worker_rss(master: int) -> int:
    """The workers' RSS in KiB, summed (the monitor's too: it maps the table as well)."""
    return sum(memory_kib(pid).get("VmRSS", 0) for pid in children_of(master))


def drive(gens: Generators, master: int, keys: int) -> list[tuple[int, int]]:
    """(answers so far, workers' RSS KiB) every second until every key is answered."""
    samples = []
    gens.go(0.0, 24 * 3600.0)
    while gens.running() and gens.answered() < keys:
        time.sleep(1.0)
        samples.append((gens.answered(), worker_rss(master)))
        print(f"cache_memory: {samples[-1][0]} keys, workers' RSS {samples[-1][1] / 1024:.1f} MiB",
              flush=True)
    return samples


def report(samples: list[tuple[int, int]], keys: int, served: int) -> int:
    """The figure: RSS once a tenth of the keys passed against the end; exit 1 if it grew."""
    settled = next((rss for answered, rss in samples if answered >= keys // 10), samples[-1][1])
    end = samples[-1][1]
    print(f"cache_memory: {samples[-1][0]} distinct keys through a pool with cache-size 10000; "
          f"backend asked {served} times; workers' RSS {settled / 1024:.1f} MiB after "
          f"{keys // 10} keys, {end / 1024:.1f} MiB at the end ({(end - settled) / 1024:+.1f} MiB)")
    return 0 if end - settled < 2048 else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    why = hapolicy_missing()
    if why:
        print(f"cache_memory: {why}", file=sys.stderr)
        return 2
    children = Children()
    tmp = tempfile.mkdtemp(prefix="hapolicy-cachemem-")
    try:
        backend, _kids, served = start_backend(children, 2)
        port = free_port()
        argv = daemon_argv(port, args.workers, backend, *CACHE)
        master = children.popen("daemon", argv, os.path.join(tmp, "daemon.log"),
                                child_env(tmp), cwd=REPO)
        why = wait_answering((HOST, port), 15.0, lambda: children.alive(master))
        if why:
            print(f"cache_memory: the daemon does not answer: {why}", file=sys.stderr)
            return 2
        gens = Generators(children, (HOST, port), args.connections, 2, 5.0, limit=args.keys,
                          fresh_every=1)
        try:
            why = gens.wait_ready(60.0)
            if why:
                print(f"cache_memory: {why}", file=sys.stderr)
                return 2
            samples = drive(gens, master.pid, args.keys)
            gens.results(30.0)
        finally:
            gens.close()
        return report(samples, args.keys, sum(served))
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
