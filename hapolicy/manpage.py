"""The man pages hapolicy(8), hapolicyctl(8) and hapolicy.conf(5), made from the sources.

    python -m hapolicy.manpage PAGE         one page (hapolicy.8, hapolicyctl.8, hapolicy.conf.5)
    python -m hapolicy.manpage --dir DIR    every page, as DIR/PAGE

Every option and its default comes from the option table (options.py), the control commands from
`commands.COMMANDS`, hapolicyctl's options from `ctl.OPTIONS`; what has no other home (signals,
exit status, files, the examples) is declared once in man/texts.py, and the roff is man/roff.py's:
this module assembles the pages, with the prose of each section. The Debian package runs
this at build time (debian/rules), so a page is never older than the code it describes. The
pages say the paths of the package (/usr/sbin/hapolicy, /etc/hapolicy.conf); a date comes from
SOURCE_DATE_EPOCH, so that a build is reproducible.
"""

from __future__ import annotations

import sys

from hapolicy import check
from hapolicy.config.file import MAX_POOLS
from hapolicy.config.option import COMMAND, DAEMON, Option, bounds_of, default_of
from hapolicy.config.options import BOUNDS_RULE, OPTIONS, SERVICE_FIELDS
from hapolicy.ctl import DEFAULT_PATH
from hapolicy.ctl import EXIT_STATUS as CTL_EXIT
from hapolicy.ctl import OPTIONS as CTL_OPTIONS
from hapolicy.man.generated import generate
from hapolicy.man.roff import escape, example, header, item, lines, para, section, table
from hapolicy.man.texts import (
    ASK_EXAMPLE,
    CACHE_TEXT,
    DAEMON_MAIN_CF,
    EXAMPLE_CACHE,
    EXAMPLE_POOLS,
    EXAMPLE_POOLS_MAIN_CF,
    EXIT_STATUS,
    FILES,
    SECURITY,
    SIGNALS,
    SPAWN_MAIN_CF,
    SPAWN_MASTER_CF,
    STATUS_EXAMPLE,
)
from hapolicy.monitor.commands import COMMANDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


# --- options -------------------------------------------------------------------------------

def option_tag(option: Option, config_file: bool = False) -> str:
    """`-d, --default ACTION` (the command line) or `default = ACTION` (the config file)."""
    if option.choices:
        value = "|".join(f"\\fB{escape(c)}\\fR" for c in option.choices)
    elif option.metavar:
        value = f"\\fI{escape(option.metavar)}\\fR"
    else:
        value = "\\fByes\\fR|\\fBno\\fR" if config_file else ""
    if config_file:
        return f"\\fB{escape(option.name)} =\\fR {value}".rstrip()
    flags = ", ".join(f"\\fB{escape(flag)}\\fR" for flag in option.flags)
    return f"{flags} {value}".rstrip()


def default_sentence(option: Option, config_file: bool = False) -> str:
    """"Default: ..." as --help and docs/configuration.md say it ('yes' or 'no' for a switch in the
    config file); '' for the command-line actions."""
    if option.scope == COMMAND:
        return ""
    text = default_of(option)
    if config_file and option.flag:
        text = "yes" if text == "on" else "no"
    return f" Default: {text}." if text else " No default."


def option_items(options: Sequence[Option], config_file: bool = False) -> str:
    out = []
    for option in options:
        bounds = f" Bounds: {bounds_of(option)}." if bounds_of(option) else ""
        out.append(item(option_tag(option, config_file),
                        option.help + "." + default_sentence(option, config_file) + bounds))
        if option.flags[0] == "-s":
            out.append(service_fields())
    return "".join(out)


def service_fields() -> str:
    """PRIO, WEIGHT and TIMEOUT, each with its default and bounds."""
    return ".RS\n" + "".join(item(f"\\fI{name}\\fR", f"{text}. Default: {default}. Bounds: "
                                 f"{bounds}.") for name, text, default, bounds in SERVICE_FIELDS
                            ) + ".RE\n"


# --- the pages -----------------------------------------------------------------------------

def hapolicy_8() -> str:
    return "".join((
        header("hapolicy", "8", "high availability and load balancing for Postfix policy "
               "services"),
        synopsis_8(), description_8(), options_8(), spawn_mode_8(), daemon_8(), upgrades_8(),
        section("SIGNALS"),
        table(SIGNALS),
        logging_8(),
        section("SECURITY"),
        table(SECURITY, bold=False),
        section("EXIT STATUS"),
        table(EXIT_STATUS),
        section("FILES"),
        table(FILES, bold=False),
        section("SEE ALSO"),
        lines("\\fBhapolicy.conf\\fR(5), \\fBhapolicyctl\\fR(8), \\fBspawn\\fR(8), "
              "\\fBmaster\\fR(5), \\fBpostconf\\fR(5), Postfix's SMTPD_POLICY_README"),
    ))


def synopsis_8() -> str:
    return "".join((
        section("SYNOPSIS"),
        lines("\\fBhapolicy\\fR [\\fB\\-d\\fR \\fIACTION\\fR] [\\fB\\-l\\fR] [\\fB\\-v\\fR] "
              "[\\fB\\-L\\fR] \\fB\\-s\\fR \\fINAME\\fR\\fB=\\fR\\fIHOST\\fR\\fB:\\fR\\fIPORT"
              "\\fR[\\fB:\\fR\\fIPRIO\\fR[\\fB:\\fR\\fIWEIGHT\\fR[\\fB:\\fR\\fITIMEOUT\\fR]]] "
              "[\\fB\\-s\\fR ...] [\\fIOPTION\\fR...]"),
        ".br\n",
        lines("\\fBhapolicy \\-c\\fR \\fIFILE\\fR [\\fIOPTION\\fR...]"),
        ".br\n",
        lines("\\fBhapolicy \\-c\\fR \\fIFILE\\fR \\fB\\-\\-check\\-config\\fR"),
    ))


def description_8() -> str:
    return "".join((
        section("DESCRIPTION"),
        para("hapolicy answers Postfix's policy delegation requests (`check_policy_service`) by "
             "asking one of several policy services (postgrey, postfwd, policyd-weight, SPF "
             "and rate-limit daemons), and answers a default action when none does. When a "
             "service dies, Postfix keeps getting answers: hapolicy asks the next one, and "
             "never makes an SMTP session wait for a dead service more than once: a service "
             "that fails is marked down in a table that every process shares, and skipped by "
             "all of them until it answers again."),
        para("Services are tried by priority, lowest first; inside one priority by weighted "
             "round robin, or with `--balance hash:ATTR,...` the same attribute values always "
             "reach the same service. The answer relayed is the service's first `action=` "
             "line, unchanged."),
        para("It keeps the command line of the Perl hapolicy of the postfwd project, option "
             "for option. Without `--listen` (and without `listen` in the config file) it "
             "serves one client on its standard input and output, as spawn(8) runs it; with "
             "it, it is a preforked daemon: a master binds the listening sockets and forks "
             "the workers, each of which serves many connections. One daemon can serve "
             "several pools of services, each with its own addresses, services, health and "
             "default action: see hapolicy.conf(5)."),
    ))


def options_8() -> str:
    return "".join((
        section("OPTIONS"),
        para("Every setting of the config file may be given on the command line, which "
             "overrides the file (in every pool). " + BOUNDS_RULE),
        option_items(OPTIONS),
        item("\\fB\\-\\-version\\fR", "print the version and exit."),
        item("\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "print the options, each with its default, "
             "and exit."),
    ))


def spawn_mode_8() -> str:
    return "".join((
        section("SPAWN MODE"),
        para("As the original: master.cf (the second line starts with blanks; `{ }` keeps an "
             "argument with spaces together):"),
        example(SPAWN_MASTER_CF),
        para("main.cf:"),
        example(SPAWN_MAIN_CF),
        para("hapolicy serves the one connection and exits when Postfix closes it. spawn(8) "
             "connects standard input, output and error to Postfix's socket, so hapolicy "
             "writes nothing but answers there: its logs go to syslog and standard error is "
             "pointed at /dev/null, except for a bad command line (see EXIT STATUS). Every "
             "process spawned with the same services shares what is known of them through "
             "a state file (`--state-file`): a dead service costs its timeout once per "
             "cool-down for the whole server, not once per SMTP connection. Spawn mode has "
             "no active checks: after its cool-down one request probes a service that is "
             "down. Run it as the user `hapolicy` (`user=hapolicy`), which the package makes "
             "and no other program runs as: any process of that user can write the state "
             "file, and so change what every session answers."),
    ))


def daemon_8() -> str:
    return "".join((
        section("DAEMON"),
        para("Put `listen` and the services in /etc/hapolicy.conf and start it with the "
             "init script or systemd; nothing goes in master.cf. main.cf:"),
        example(DAEMON_MAIN_CF),
        para("The master keeps root (to bind, reload and clean up) and talks to no network; "
             "the workers and the monitor run as `--user` and `--group` (the package's init "
             "script and unit give `hapolicy`). The monitor checks every service every "
             "`--check-interval` seconds; with checks on, only `--check-rise` answered checks "
             "in a row bring a service back. It also answers hapolicyctl(8) on `--control "
             "PATH` and serves Prometheus metrics and a status page on `--metrics-listen "
             "HOST:PORT`. `ps` shows "
             "`hapolicy: master`, `hapolicy: monitor` and `hapolicy: worker requests=N "
             "clients=N`."),
    ))


def upgrades_8() -> str:
    return "".join((
        section("RESTARTS AND UPGRADES"),
        para("smtpd keeps its connection to a policy service open; when it is closed or "
             "refused, smtpd logs `problem talking to server` and sleeps "
             "`smtpd_policy_service_retry_delay` (1 s) before it tries again. A restart closes "
             "every such connection: with real Postfix and 16 SMTP sessions, a restart made each "
             "smtpd stall once for a second (16 RCPTs of about 8,900 over 1 s). "
             "HUP (a new configuration) and USR2 (a new program) close none: through an "
             "upgrade by USR2, none did (about 9,500 RCPTs, the longest 0.05 s)."),
        para("USR2 starts the program on disk with the same command line and hands it every "
             "listening socket, the services' health and the operator's admin state; once one "
             "of its workers accepts, it writes the pidfile and tells systemd (`MAINPID=`), "
             "the old workers retire as on HUP and the old master exits after them. If the new "
             "program fails first, the running master keeps serving and logs one line, "
             "`upgrade failed, the running master keeps serving: WHY`. The init script's "
             "`upgrade` action and `systemctl kill --kill-whom=main -s USR2 hapolicy` send it; "
             "the Debian package does it when it is upgraded."),
    ))


def logging_8() -> str:
    return "".join((
        section("LOGGING"),
        para("Syslog, facility mail, ident `hapolicy[PID]`; without /dev/log lines are "
             "dropped and hapolicy keeps working. A state change of a service is logged once, "
             "a request answered with the default action as a warning (at most one line a "
             "second, with the count of the others), and so is an exception while handling "
             "a request: that request alone gets the default action, the worker goes on, and "
             "the line names the exception and where it was raised (a bug worth reporting). "
             "With `-l`, one line per request:"),
        example("pool=grey service=GREY1 client=mail.example.org[192.0.2.10] "
                "helo=<mail.example.org> sender=<a@example.org> recipient=<b@example.net> "
                "delay=0.004s action=DUNNO"),
    ))


def hapolicy_conf_5() -> str:
    daemon = [o for o in OPTIONS if o.scope == DAEMON]
    pool = [o for o in OPTIONS if o.scope not in (DAEMON, COMMAND)]
    return "".join((
        header("hapolicy.conf", "5", "configuration file of hapolicy"),
        section("SYNOPSIS"),
        lines("/etc/hapolicy.conf"),
        description_5(), services_5(), pools_5(),
        section("VERDICT CACHE"),
        para(CACHE_TEXT),
        example(EXAMPLE_CACHE),
        section("DAEMON SETTINGS"),
        para("Before the first section only."),
        option_items(daemon, config_file=True),
        section("POOL SETTINGS"),
        para("In a pool's section, or before the first one as the default of every pool "
             "(`policy-context` only in a section)."),
        option_items(pool, config_file=True),
        section("EXAMPLE"),
        para("Three pools (two postgrey servers with separate databases, a rate limiter "
             "keyed on the SASL user, SPF) on one address, told apart by policy_context:"),
        example(EXAMPLE_POOLS),
        para("main.cf:"),
        example(EXAMPLE_POOLS_MAIN_CF),
        section("FILES"),
        table(FILES[:2], bold=False),
        section("SEE ALSO"),
        lines("\\fBhapolicy\\fR(8), \\fBhapolicyctl\\fR(8), \\fBpostconf\\fR(5)"),
    ))


def description_5() -> str:
    return "".join((
        section("DESCRIPTION"),
        para("The settings and services of hapolicy(8), read with `hapolicy -c FILE`. Lines "
             "are `key = value`; a key is the long command-line option without its leading "
             "`--` (`-` and `_` alike); a line that starts with `#` is a comment (there are "
             "no comments after a value). A switch of the command line (`-l`, `--daemonize`) "
             "is `yes` or `no` here. The command line overrides the file. "
             "`hapolicy -c FILE --check-config` prints the daemon's settings and every pool, "
             "or names `FILE:LINE` and what is wrong (exit status 2). SIGHUP makes the "
             "daemon read the file again: pools and listen addresses may come and go, and a "
             "service that keeps its pool, name and address keeps its health."),
        para(BOUNDS_RULE + " Only a newline (LF) ends a line of the file."),
    ))


def services_5() -> str:
    service = next(o for o in OPTIONS if o.flags[0] == "-s")
    return "".join((
        section("SERVICES"),
        item(f"\\fBservice =\\fR \\fI{escape(service.metavar)}\\fR", service.help +
             ". Once per service; in a file with pools, inside each pool's section. Bounds: "
             + bounds_of(service) + "."),
        service_fields(),
    ))


def pools_5() -> str:
    return "".join((
        section("POOLS"),
        para("Each `[pool NAME]` section is a pool: its own listen addresses, services, "
             "health, balancing and default action; one master and one set of workers serve "
             "every pool. The keys before the first section are the daemon's (DAEMON "
             "SETTINGS below) and the defaults of every pool (POOL SETTINGS); a section "
             "holds pool settings only. A file without sections is one pool named `default`. "
             "The command line is always one pool: its settings override every pool's, and "
             "`-s` cannot be combined with a file of pools. A file has at most "
             f"{MAX_POOLS} pools."),
        para("Postfix 3.1 and later send `policy_context=VALUE` when main.cf says "
             "`check_policy_service { inet:127.0.0.1:10060, policy_context=grey }`. Pools may "
             "share a listen address when each names the context it serves "
             "(`policy-context = grey`): a request is answered by the pool of its context; "
             "one without a known context by the pool that says `policy-context = *`, or "
             "else with the first pool's default action and a warning in the log. Without "
             "policy_context (Postfix before 3.1), give each pool its own `listen` port."),
    ))


def hapolicyctl_8() -> str:
    return "".join((
        header("hapolicyctl", "8", "send a command to a running hapolicy daemon"),
        section("SYNOPSIS"),
        lines("\\fBhapolicyctl\\fR [\\fB\\-\\-control\\fR \\fIPATH\\fR | \\fB\\-c\\fR "
              "\\fICONFIG\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]"),
        ".br\n",
        lines("\\fBhapolicyctl\\fR [...] \\fBcheck\\fR [\\fB\\-w\\fR \\fIRANGE\\fR] "
              "[\\fB\\-c\\fR \\fIRANGE\\fR] [\\fB\\-\\-pool\\fR \\fINAME\\fR] "
              "[\\fB\\-\\-interval\\fR \\fIS\\fR]"),
        ".br\n",
        lines("\\fBhapolicyctl\\fR [\\fB\\-\\-control\\fR \\fIPATH\\fR | \\fB\\-c\\fR "
              "\\fICONFIG\\fR] \\fBask\\fR [\\fB\\-\\-dry\\-run\\fR] \\fIPOOL\\fR "
              "[\\fIATTR\\fR=\\fIVALUE\\fR ...]"),
        section("DESCRIPTION"),
        para("With `--control PATH` (config file: `control = PATH`) hapolicy(8) answers "
             "commands on a unix socket (bound by its master, served by its monitor), mode "
             "0600 and owned by the master's user "
             f"(`--control-group GROUP`: 0660, that group too). hapolicyctl sends one command "
             f"and prints the answer. It finds the socket with `--control PATH`, in the "
             f"daemon's config file with `-c CONFIG` (its `control` line), or at "
             f"`{DEFAULT_PATH}`. A daemon without pool sections has one pool, `default`."),
        section("OPTIONS"),
        table(CTL_OPTIONS),
        section("COMMANDS"),
        table(COMMANDS),
        section("CHECK"),
        para(check.TEXT),
        table(check.OPTIONS),
        para("The state, the worst that holds:"),
        table(check.RULES),
        example(check.EXAMPLE),
        section("EXIT STATUS"),
        table(CTL_EXIT),
        para("check exits with its state (CHECK)."),
        section("EXAMPLE"),
        example(STATUS_EXAMPLE + "$ hapolicyctl disable grey/GREY2\nok: grey/GREY2 disabled"),
        example(ASK_EXAMPLE.rstrip("\n")),
        section("FILES"),
        table(((DEFAULT_PATH, ("the control socket when neither `--control` nor `-c` is "
                "given")), FILES[0]), bold=False),
        section("SEE ALSO"),
        lines("\\fBhapolicy\\fR(8), \\fBhapolicy.conf\\fR(5)"),
    ))


PAGES: dict[str, Callable[[], str]] = {
    "hapolicy.8": hapolicy_8,
    "hapolicyctl.8": hapolicyctl_8,
    "hapolicy.conf.5": hapolicy_conf_5,
}
USAGE = "usage: python -m hapolicy.manpage PAGE | --dir DIR   (PAGE: " + ", ".join(PAGES) + ")"


def main(argv: Sequence[str]) -> int:
    return generate(argv, PAGES, "hapolicy.manpage", USAGE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
