#!/usr/bin/env python3
"""Failover behaviour of a real hapolicy daemon (and of the Perl original), measured on 127.0.0.1.

    python scripts/failover.py                    # every figure, about a minute and a half
    python scripts/failover.py --quick --json F   # fewer requests and trials (about 20 s)
    python scripts/failover.py --slow             # figure 9 alone (about 30 s)

"daemon" is `python -m hapolicy --listen 127.0.0.1:PORT --workers 2 ...` run from the repository;
every request to it is a new connection (so requests land on either worker). "perl" is Debian's
/usr/sbin/hapolicy in spawn style: one process whose stdin and stdout are one end of a
socketpair, fed one request at a time (its priority field is given: NAME=HOST:PORT:PRIO...).
The backends are scripts/testkit's: a FakeBackend that answers at once or stays silent, a
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
   (a fast one, one that answers after 10 s), in one daemon; `--tail` runs this figure alone.
9. slow, not dead: three balancers side by side, hapolicy's weighted round robin and
   least-latency (daemon, 2 workers, --sticky-instance no) and HAProxy's `balance leastconn`
   (TCP mode, one thread; the Debian package haproxy, skipped without it), each client a
   persistent connection: (a) services answering in 1 ms and 40 ms, 2,000 requests on 8
   connections; (b) equal answer times, weights 2:1; (c) a serial service (one request at a
   time, 5 ms each, as postgrey) and a normal one, 32 connections, also with hapolicy's
   --max-inflight 2 and HAProxy's `maxconn 2` on the serial server: p50, p99, max, each
   service's share and the most requests each held at once. `--slow` runs it alone (about
   30 s; 10 s with --quick); --quick without --slow skips it.

Every backend answers a distinctive action, and every answer is checked against the backend
it should come from; an answer beyond the requests that backend served is a problem too.

Stdlib only, Linux only (/proc). Every process and backend it starts is stopped at the end,
also on an error, Ctrl-C, SIGTERM or SIGHUP. Exit status: 0, 1 when a figure failed or a
sanity check did not hold (listed under "problems"), 130 when interrupted.

This file is the entry point; the figures are the package failoverkit/ beside it, one job a
module (see failoverkit/__init__.py).
"""

from __future__ import annotations

import sys

from failoverkit.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
