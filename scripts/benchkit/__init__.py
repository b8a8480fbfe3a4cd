"""The pieces of scripts/bench.py, one job each (see each module's docstring).

wire: requests, answers, their kinds; procs: processes and /proc; servers: the backend, the
spawn(8) emulator, the proxies' command lines and configs; loadgen: the load generator;
rows: the rows as data and the one function that measures a row; soak: --soak; report: the
table, ratios, warnings and JSON; cli: the command line and the exit status.
"""
