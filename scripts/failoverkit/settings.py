"""The figures' parameters: what each one sets up, and what the report prints beside it.

Contract: constants only, no behaviour. The timeouts and periods are the daemon's options in
seconds; the TAIL_* values are figure 8's (scripts/failoverkit/figures/tail.py), the SLOW_*
ones figure 9's (figures/slow.py).
"""

SILENT_TIMEOUT = 2  # TIMEOUT of a silent service (figures 1-2 and 6)
BLACKHOLE_TIMEOUT = 30  # TIMEOUT of a blackholed service: the connect timeout decides first
CONNECT_TIMEOUT = 1  # --connect-timeout with a blackholed service
PROBE_COOLDOWN = 1.0  # --cooldown and --cooldown-max of the recovery by probe (figure 3)
TICK = 0.05  # one request every TICK seconds during the recovery by probe
CHECK_INTERVAL = 0.5  # --check-interval and --check-down-interval of the recovery by check
HASH_KEY = "client_address,sender,recipient"  # --balance hash: of figure 4
CASES = ("silent", "blackhole", "refused")  # how the primary is dead in figures 1-2

TAIL_CONNECTIONS = 8  # persistent connections per row of figure 8
TAIL_SLOW_EVERY, TAIL_SLOW_DELAY = 10, 0.5  # the slow P: every 10th request waits 500 ms
TAIL_HEDGE, TAIL_HEDGE_MAX = 0.05, 15  # hedge and hedge-max of the hedged row
TAIL_ROWS = ("plain", "shadow", "shadow slow", "slow", "hedged")

# Figure 9 (scripts/failoverkit/figures/slow.py): per scenario its backends (answer time in
# seconds, weight, serial: one request at a time over all connections), its clients (each a
# persistent connection), the requests per client (a full run, --quick) and its rows, each a
# proxy: the daemon with these options, or HAProxy leastconn with these servers' maxconn.
_WEIGHTED = {"proxy": "daemon", "args": []}
_LEAST_LATENCY = {"proxy": "daemon", "args": ["--balance", "least-latency"]}
_LEASTCONN = {"proxy": "haproxy"}
_BALANCERS = {"hapolicy weighted": _WEIGHTED, "hapolicy least-latency": _LEAST_LATENCY,
              "haproxy leastconn": _LEASTCONN}
SLOW_SCENARIOS = {
    "latency": {"backends": {"FAST": {"delay": 0.001}, "SLOW": {"delay": 0.040}},
                "clients": 8, "per_client": (250, 50), "rows": _BALANCERS},
    "weights": {"backends": {"A": {"delay": 0.002, "weight": 2}, "B": {"delay": 0.002}},
                "clients": 6, "per_client": (250, 75), "rows": _BALANCERS},
    "serial": {"backends": {"SERIAL": {"delay": 0.005, "serial": True},
                            "OTHER": {"delay": 0.001}},
               "clients": 32, "per_client": (25, 10),
               "rows": {"hapolicy weighted": _WEIGHTED,
                        "hapolicy max-inflight 2": {"proxy": "daemon",
                                                    "args": ["--max-inflight", "2"]},
                        "hapolicy least-latency": _LEAST_LATENCY,
                        "haproxy leastconn": _LEASTCONN,
                        "haproxy maxconn 2": {"proxy": "haproxy",
                                              "maxconn": {"SERIAL": 2}}}},
}
SLOW_SHARE_OF = {"latency": "SLOW", "weights": "A", "serial": "SERIAL"}  # the share shown
