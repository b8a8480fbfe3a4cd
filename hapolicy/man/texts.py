"""The man pages' fixed texts: the tables and examples that have no other home.

The signals, the exit statuses, the security and files tables and the examples (config files,
master.cf and main.cf lines, hapolicyctl status) are declared here once; manpage.py puts them
in the pages, and tests hold the manual to them (README.md: the master.cf and main.cf
examples; docs/configuration.md: the config file example with pools; docs/operating.md: the
signal table, hapolicyctl status). Plain text with `code` spans, as roff.py takes it.
"""

#: Signals of the daemon's master (the signal table of docs/operating.md is held to these).
SIGNALS = (
    ("HUP", ("re-read the config file (pools and listen addresses may come and go); new "
     "workers take new connections, old ones retire (they keep serving their connections "
     "until the clients close them). A config that fails validation is logged and the old "
     "one keeps running")),
    ("TERM", ("stop accepting, let in-flight requests finish (`--drain-timeout`), exit 0, "
     "remove the pidfile and unix socket")),
    ("INT, QUIT", "stop at once"),
    ("USR2", ("upgrade in place: start the program on disk again (same command line and config "
     "file) and hand it every listening socket, the health of the services and the operator's "
     "admin state; once one of its workers accepts (and the new master has run a second "
     "more), the old workers retire as on HUP, and the "
     "old master (`hapolicy: old master (retiring)`) exits after the last of them. If the new "
     "program fails first (a bad config, a broken install, no worker accepting within 60 s), "
     "the old master keeps serving and logs why in one line (`upgrade failed, the running "
     "master keeps serving: ...`); a later USR2 may try again. The workers and the monitor "
     "ignore USR2")),
)

EXIT_STATUS = (
    ("0", ("spawn mode: the client closed its connection; the daemon: stopped by a signal; "
     "`--check-config`: the configuration is valid")),
    ("1", ("the daemon could not start or run (one line on stderr and in syslog); "
     "`--daemonize` returns 1 when the master did not start")),
    ("2", ("a bad command line or config file: one line on stderr (and syslog) naming the bad "
     "value, `FILE:LINE: what` for a file; under spawn(8) hapolicy then exits before reading a "
     "request, so Postfix defers the mail (451 4.3.5) instead of passing it")),
)

SECURITY = (
    ("root", ("the daemon's master: it binds the sockets, reads the config file, writes the "
     "pidfile and `--state-file`, and forks; it reads no client's or service's bytes. It imports "
     "all its children may need before it forks, so they read no Python file after the drop")),
    ("--user, --group", ("the workers and the monitor: every exchange with Postfix and the "
     "services, the checks, the control socket's commands, /metrics. Give a user of its own "
     "(the package's `hapolicy`), not `nobody`")),
    ("user=hapolicy", ("spawn mode, as master.cf says; it drops nothing. A user of its own: "
     "any process of that user can write the shared state file in /run/hapolicy/spawn")),
    ("not writable by others", ("the config file, the directory of the pidfile and of the "
     "control socket (/run/hapolicy). A state file (`--state-file`, spawn mode's) is used only "
     "when it is a regular file, not a symbolic link, owned by root or the user hapolicy runs "
     "as and writable by no one else; else it is ignored with a warning and replaced. Root "
     "writes the pidfile and the daemon's state file through a new temporary file "
     "(O_CREAT|O_EXCL|O_NOFOLLOW) renamed into place")),
    ("a socket in another user's directory", ("a unix listen socket may be in a directory "
     "another user writes (Postfix's private/): root never changes a mode or owner through a "
     "path, only through a handle to the socket it made, checked to be its own")),
    ("bounds", ("every setting has bounds (see OPTIONS); a request over a limit or with a line "
     "without `=` gets the default action; an exception while handling a request costs that "
     "request alone; /metrics and the control socket hold at most 16 connections, each with "
     "2 s to send its request, the oldest incomplete one making room for a new one")),
)

FILES = (
    ("/etc/hapolicy.conf", ("the config file of the init script and the systemd unit; see "
     "hapolicy.conf(5). As the package installs it, it sets every setting to its default and "
     "has its example pools commented out: the daemon starts once it has a `service` line")),
    ("/etc/default/hapolicy", ("the init script's settings: `DAEMON_ARGS` (by default `--user "
     "hapolicy --group hapolicy`), `CONFIG`, `PIDFILE`, `DAEMON`, `STOP_TIMEOUT`")),
    ("/etc/init.d/hapolicy", ("the LSB init script: start, stop, status, reload (HUP), "
     "upgrade (USR2: in place, without a stall), restart")),
    ("/lib/systemd/system/hapolicy.service", ("the systemd unit (`Type=notify`, the master in "
     "the foreground)")),
    ("/lib/systemd/system/hapolicy.socket", ("socket activation: systemd holds the listening "
     "socket, so Postfix finds it while hapolicy restarts; not enabled by the package (its "
     "`ListenStream=` must be one of the `listen` addresses)")),
    ("/run/hapolicy.pid", "the init script's pidfile"),
    ("/run/hapolicy/control", ("the control socket (`control` in the packaged config file), "
     "for hapolicyctl(8)")),
    ("/run/hapolicy/spawn/health-DIGEST", ("spawn mode: the state file in which every process "
     "spawned with one service list shares their health; the directory is the user "
     "hapolicy's (made by the package), used when it is the running user's own and no one "
     "else may write it, else `$XDG_RUNTIME_DIR/hapolicy/` when that is set, else "
     "`/tmp/hapolicy-UID/`; `--state-file`")),
    ("/dev/log", "where syslog lines go (`--syslog-socket`)"),
    ("/usr/share/doc/hapolicy/", ("the documentation: README.md, and the manual in docs/ "
     "(configuration, health and failover, operating, security, performance, compatibility "
     "with the Perl original)")),
)

#: The config file example with three pools on one address (docs/configuration.md shows the
#: same lines).
EXAMPLE_POOLS = """\
workers = 4
# every pool's address, unless a pool says otherwise
listen = 127.0.0.1:10060
check-interval = 5

[pool grey]
policy-context = grey
service = GREY1=10.0.0.1:10023
service = GREY2=10.0.0.2:10023
balance = hash:client_address/24,sender,recipient
fail-answer = ^451 4\\.3\\.5|^DEFER_IF_PERMIT Service temporarily unavailable

[pool rate]
policy-context = rate
service = RATE1=10.0.0.1:10033
service = RATE2=10.0.0.2:10033
balance = hash:sasl_username
total-timeout = 10

[pool spf]
policy-context = spf
service = SPF1=10.0.0.1:10045:10
service = SPF2=10.0.0.2:10045:20
"""

#: A pool of SPF services that caches (docs/configuration.md and README.md show the same lines)
EXAMPLE_CACHE = """\
[pool spf]
listen = 127.0.0.1:10060
service = SPF1=10.0.0.1:10045:10
service = SPF2=10.0.0.2:10045:20
# SPF's verdict depends on the client's address, HELO name and sender only
sticky-instance = no
cache = 300
cache-key = client_address,helo_name,sender
# every SPF service down: the verdict of the last hour instead of the default
cache-stale = 3600
"""

#: What the verdict cache is for, and when it is refused (hapolicy.conf(5))
CACHE_TEXT = (
    "With `cache = S` a pool keeps a good answer of its services S seconds under the values "
    "of `cache-key`'s attributes (and the request's protocol_state; `ATTR/N` masks an address "
    "as `balance = hash:` does), in one table of all workers, and answers a request of the "
    "same key meanwhile without asking a service: the same client and sender asked once per "
    "recipient cost one DNS walk of an SPF or DNSBL service. Only final verdicts are kept "
    "(DUNNO, OK, PREPEND, REJECT, 5xx; `cache-actions` says otherwise), never a temporary "
    "one (DEFER, 4xx) or an answer `fail-answer` matches. With `cache-stale = S` a request "
    "whose services all failed or are down gets its key's answer of the last S seconds "
    "instead of the default action. A cache is for services without state: postgrey must see "
    "the retry to let it through, a rate limiter must count each message, so a pool that "
    "hashes, keeps instances sticky, has a shadow or keeps temporary answers is refused "
    "unless `cache-force = yes`. `hapolicyctl cache-clear POOL` empties it; a reload keeps "
    "it while the pool's services, cache-key, cache-actions and cache-size stay; it starts "
    "empty after an upgrade in place (SIGUSR2). A pool that caches is refused when "
    "PYTHONHASHSEED fixes Python's hash secret (a number): unset it. Spawn mode: each "
    "spawned process has a cache of its own, for its one SMTP connection.")

#: hapolicyctl status during a failover (docs/operating.md shows the same lines)
STATUS_EXAMPLE = """\
$ hapolicyctl status
pool  service  address         state  admin    weight  answers  failures  p50_ms  p99_ms  last_change
grey  GREY1    10.0.0.1:10023  up     enabled  1       5127     0         0.50    0.99    2d03h
grey  GREY2    10.0.0.2:10023  down   enabled  1       825      1         1.78    4.59    3s
"""

#: hapolicyctl ask and ask --dry-run with GREY2 stopped (docs/operating.md shows the same lines)
ASK_EXAMPLE = """\
$ hapolicyctl ask grey client_address=192.0.2.77 sender=d@example.org recipient=b@example.net
pool=grey service=GREY2 address=10.0.0.2:10023 delay=0.000s failed="connection refused"
pool=grey service=GREY1 address=10.0.0.1:10023 delay=0.003s action=DEFER_IF_PERMIT Greylisted for 300 seconds
answer: service=GREY1 delay=0.003s action=DEFER_IF_PERMIT Greylisted for 300 seconds
$ hapolicyctl ask --dry-run grey client_address=192.0.2.12 sender=d@example.org recipient=b@example.net
pool=grey balance=hash:client_address/24,sender,recipient key="client_address/24=192.0.2.0 sender=d@example.org recipient=b@example.net"
order: GREY1
skipped: GREY2[down]
answer: the first of the order to answer; if none, default="all services failed" action=DEFER_IF_PERMIT hapolicy default
"""

#: main.cf for EXAMPLE_POOLS (docs/configuration.md shows the same lines).
EXAMPLE_POOLS_MAIN_CF = """\
smtpd_recipient_restrictions =
    permit_mynetworks,
    reject_unauth_destination,
    check_policy_service { inet:127.0.0.1:10060, policy_context=grey },
    check_policy_service { inet:127.0.0.1:10060, policy_context=spf }
smtpd_data_restrictions =
    check_policy_service { inet:127.0.0.1:10060, policy_context=rate }
"""

SPAWN_MASTER_CF = (
    "127.0.0.1:10060 inet  n  n  n  -  0  spawn\n"
    "  user=hapolicy argv=/usr/sbin/hapolicy -l -s GREY1=10.0.0.1:10023:10 "
    "-s GREY2=10.0.0.2:10023:20 -d { DEFER_IF_PERMIT policy service unavailable }\n")

SPAWN_MAIN_CF = """\
127.0.0.1:10060_time_limit = 3600
smtpd_recipient_restrictions = ..., check_policy_service inet:127.0.0.1:10060
"""

DAEMON_MAIN_CF = """\
smtpd_recipient_restrictions =
    permit_mynetworks,
    reject_unauth_destination,
    check_policy_service inet:127.0.0.1:10060
"""
