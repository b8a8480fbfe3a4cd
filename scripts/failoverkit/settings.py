"""The figures' parameters: what each one sets up, and what the report prints beside it.

Contract: constants only, no behaviour. The timeouts and periods are the daemon's options in
seconds; the TAIL_* values are figure 8's (scripts/failoverkit/figures/tail.py).
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
