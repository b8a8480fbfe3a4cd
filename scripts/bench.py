#!/usr/bin/env python3
"""Closed-loop load benchmark of Postfix policy-protocol proxies, all on 127.0.0.1.

Rows, each measured only when available (otherwise reported as skipped, with why):

  backend         a backend that answers `action=DUNNO hapolicy-bench` at once (epoll loop,
                  SO_REUSEPORT processes, counting the requests it serves), measured alone: the
                  ceiling of this machine and load generator
  python floor    a minimal relay of the policy protocol in CPython (benchkit/floor.py: as many
                  SO_REUSEPORT processes as daemon workers, raw epoll, one backend connection
                  per client, whole messages passed through): what the language costs
  hapolicy daemon python -m hapolicy --listen ... --workers N -s B=127.0.0.1:BACKEND
  hapolicy balanced  the daemon with -s C=127.0.0.1:BACKEND too: two services balanced by
                  weighted round robin, transactions sticky (the lane, its pick and stickiness)
  hapolicy hashed the daemon with the two services and --balance hash:client_address: every
                  request takes the general path
  hapolicy spawn  python -m hapolicy -s B=... under a spawn(8) emulator (one process per
                  connection, the socket as its stdin, stdout and stderr)
  haproxy         HAProxy in TCP mode, one thread (/usr/sbin/haproxy, Debian package haproxy)
  perl original   /usr/sbin/hapolicy -s B=...:10 (Debian package hapolicy) under the emulator
  spawn start     no load: from a process's start to its first answer, as spawn(8) starts one
                  per SMTP connection (one socket as its fds 0-2, a request waiting): hapolicy
                  spawn, the Perl original, and `python -c pass` (to its exit: the
                  interpreter's own floor); medians of 30 interleaved runs of each

The load generator keeps C persistent connections busy (closed loop: send a ~600-byte
smtpd_access_policy request, wait for the whole answer, check it, repeat) for T seconds after a
warm-up, split over P generator processes whose own CPU time is reported. Each row reports
requests/s, latency percentiles, errors, peak RSS of the proxy's processes, and CPU shares.

Every answer is compared with the backend's own, byte for byte: a proxy's default answer
(`action=dunno`, e.g. when it never asked the backend) and any other answer count as errors,
and so does a row that got more right answers than the backend served requests during it.
With --backend HOST:PORT the expected answer is the one that backend gives the bench directly
(it must not be `dunno`, which cannot be told from a default answer), and its requests are
not counted.

    python scripts/bench.py                      # every available row, 32 connections, 10 s
    python scripts/bench.py --rows daemon,haproxy --connections 64 --seconds 20
    python scripts/bench.py --idle 2000          # + memory per idle connection of the daemon
    python scripts/bench.py --soak 1000000       # the daemon's worker RSS over 1M requests
    python scripts/bench.py --smoke --json out.json   # CI: ~1 s per row, non-zero on errors
    python scripts/bench.py --inprocess 100000   # each relay's CPU per request, one process

With --idle N the bench holds N idle connections itself: it raises its RLIMIT_NOFILE to the
hard limit and stops at once if that is still too low. HAProxy needs two descriptors per
proxied connection; when its limit cannot hold N, it gets fewer, and the report says so.

--soak N runs only the daemon (--max-use above N, so that no worker is replaced) until N
requests are answered, cycling through 4096 distinct requests, and samples each worker's
VmRSS every second: RSS after warm-up (N/10 requests), at the end, growth, the least-squares
slope, and a timeline. It exits non-zero on errors or when a worker was replaced.

--inprocess N runs no row and starts no process: N requests, one at a time, go through each
relay inside this process (the python floor's, the daemon's lane for one service and for two
balanced by round robin, its general path), between a client and a backend connection on
127.0.0.1 that the bench itself drives, 5 interleaved rounds (--rounds); each relay's user+sys
CPU per request, less the driver's own, and its ratio to the floor's. Nothing else runs, so its
rounds agree within a few percent: the figure for a small change on the request path. The rows
remain what a user gets on a loaded machine.

Stdlib only, Linux only (/proc, epoll). Every process it starts is killed at the end, also on
Ctrl-C, SIGTERM or an exception.

This file is the entry point; the bench itself is the package benchkit/ beside it, one job a
module (see benchkit/__init__.py).
"""

from __future__ import annotations

import sys

from benchkit.cli import main, parse_args
from benchkit.measure import answer_counts
from benchkit.wire import ANSWER, DEFAULT_ANSWER, classify

__all__ = ["ANSWER", "DEFAULT_ANSWER", "answer_counts", "classify", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
