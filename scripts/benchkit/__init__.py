"""The modules of scripts/bench.py, one job each (each module's docstring states its contract).

wire: requests, answers and their kinds (framed by testkit.protocol, the tests' own);
procs: start, track and always stop processes, /proc accounting; tree: the tree whose hapolicy
is measured, in the bench's processes and in its own; servers: our backend, the spawn(8)
emulator, how each proxy is started; loadgen: the load generator processes; measure: the
closed loop of one row and its figures; idle: --idle connections; runner: the state of a run
(backend, rows, warnings, cleanup); rows: the rows as data and the one function that measures
a row; startup: the spawn start row (process start to first answer); soak: --soak; inprocess:
--inprocess (each relay's CPU per request inside one process); report: the table, ratios,
warnings, JSON and exit status; cli: the command line and signals. Ports, HOST and the Perl
original's syslog shim are testkit's (scripts/testkit, beside it).
"""
