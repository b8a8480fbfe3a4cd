"""The modules of scripts/failover.py, one job each (each module's docstring states its contract).

settings: every figure's parameters (timeouts, periods, sizes of the tail and slow rows); registry:
everything started is registered and closed once, also at exit; daemon: the daemon as the figures
run it (a timed request on a new connection, the worker that served it); stats: percentiles,
summaries, durations and shares as text, plain-text tables; run: the state of one run (options,
sizes, the report being filled, problems, progress lines); figures/: one module per figure
(failover: 1-2, recovery: 3, hashing: 4, weighted: 5, all_down: 6, released: 7, tail: 8, slow: 9);
haproxy: HAProxy balancing by leastconn in front of figure 9's backends; checks: the answers each
backend served, the sanity checks after the figures; schedule: which figure runs when (the
original's slow ones in background threads); report: the report as text; cli: the command line,
signals, cleanup, the JSON and the exit status.
"""
