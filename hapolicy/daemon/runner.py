"""Start the daemon: the checks a postmaster's mistakes fail early, bind, detach, pidfile, run
the master, clean up. The exit status tells an init script what happened: 0 after a stop, 1
when it could not start or run (one line on stderr and in syslog), 2 for a bad configuration.

Started by the old master of an upgrade in place (HAPOLICY_UPGRADE, handover.py), it adopts
the sockets passed instead of binding them, neither detaches (it is detached already) nor
writes the pidfile before it serves (master.py), puts its real standard error back once its
sockets are taken, and tells the old master why when it cannot start.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from hapolicy.base.log import Logger
from hapolicy.config.records import DaemonConfig
from hapolicy.config.values import ConfigError
from hapolicy.daemon.adminstate import check_writable
from hapolicy.daemon.chores import (
    check_may_switch_user,
    check_pidfile,
    daemonize,
    notify_ready,
    print_error,
    raise_fd_limit,
    resolve_ids,
    write_pidfile,
)
from hapolicy.daemon.handover import CONTROL, METRICS, Handover, HandoverError
from hapolicy.daemon.listener import ListenError
from hapolicy.daemon.master import MASTER_SIGNALS, Master
from hapolicy.daemon.monitorsockets import adopt_control, bind_control, bind_metrics


def prepare(master: Master, config: DaemonConfig, log: Logger) -> None:
    """The checks a postmaster's mistakes fail early, and the binding of every socket, before
    anything detaches; ConfigError (exit 2), ListenError or OSError (exit 1)."""
    handover = master.handover
    resolve_ids(config.user, config.group)
    check_may_switch_user(config.user, config.group)
    if config.pidfile:
        check_pidfile(config.pidfile, handover.from_pid if handover else 0)
    if config.state_file not in ("", "none"):
        check_writable(config.state_file)
    master.fd_limit = raise_fd_limit()
    if config.metrics_listen:  # first: nothing else to undo when it fails
        handed = handover.take(METRICS, config.metrics_listen) if handover else None
        master.served.metrics = handed.sock if handed else bind_metrics(config.metrics_listen)
    master.listeners.bind(config, handover.listeners() if handover else ())
    if config.control:  # last: a failure after it would leave its file
        handed = handover.take(CONTROL, config.control) if handover else None
        master.served.control = (adopt_control(config, handed) if handed
                                 else bind_control(config))
    if handover is not None:
        for gone in handover.untaken():
            log.notice(f"upgrade: the old master's {gone} is not in the configuration: "
                       "not taken")
    elif master.listeners.adopted():
        log.info("socket activation: listening on the sockets passed by systemd for "
                 + ", ".join(master.listeners.adopted()))


def fail(message: str, log: Logger, handover: Handover | None = None) -> None:
    """A start that failed: one line in the log and on stderr, and to the old master of an
    upgrade."""
    log.error(message)
    if not log.to_stderr:
        print_error(message)
    if handover is not None:
        handover.failed(message)


def run_daemon(config: DaemonConfig, log: Logger,
               reload_config: Callable[[], DaemonConfig] | None = None) -> int:
    """Run the daemon in the foreground (or detached with --daemonize); the exit status."""
    try:
        handover = Handover.from_environ()
    except HandoverError as exc:
        fail(str(exc), log)
        return 2
    master = Master(config, log, reload_config, handover=handover)
    try:
        prepare(master, config, log)
    except (ConfigError, ListenError, OSError) as exc:
        master.listeners.undo()  # a unix socket bound before the failure
        fail(str(exc) if not isinstance(exc, OSError) else
             f"cannot start: {exc.strerror or exc}", log, handover)
        return 2 if isinstance(exc, ConfigError) else 1
    if handover is not None:
        handover.restore_stderr()
    ready_w = daemonize() if config.daemonize and handover is None else -1
    pid = master.pid = os.getpid()
    try:
        try:
            if config.pidfile and handover is None:  # the new master's: once it serves
                write_pidfile(config.pidfile)
        except OSError as exc:
            fail(f"cannot write pidfile {config.pidfile}: {exc.strerror}", log)
            return 1
        master.start()
        if ready_w >= 0:
            notify_ready(ready_w)
            ready_w = -1
        return master.run()
    except Exception as exc:  # noqa: BLE001 - a bug: one line in the log, never a traceback
        master.log.error(f"master internal error: {type(exc).__name__}: {exc}")
        if master.handover is not None:
            master.handover.failed(f"master internal error: {type(exc).__name__}: {exc}")
        if master.workers:
            master.kill_all(signal.SIGTERM)
        return 1
    finally:
        if os.getpid() == pid:
            master.cleanup()
            for sig in MASTER_SIGNALS[:-1]:  # a late signal must not change the exit status
                signal.signal(sig, signal.SIG_IGN)
