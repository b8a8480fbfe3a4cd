"""Start the daemon: the checks a postmaster's mistakes fail early, bind, detach, pidfile, run
the master, clean up. The exit status tells an init script what happened: 0 after a stop, 1
when it could not start or run (one line on stderr and in syslog), 2 for a bad configuration.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from hapolicy.base.log import Logger
from hapolicy.config.records import Config, ConfigError
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
from hapolicy.daemon.listener import ListenError
from hapolicy.daemon.master import MASTER_SIGNALS, Master
from hapolicy.daemon.monitorsockets import bind_control, bind_metrics


def prepare(master: Master, config: Config, log: Logger) -> None:
    """The checks a postmaster's mistakes fail early, and the binding of every socket, before
    anything detaches; ConfigError (exit 2), ListenError or OSError (exit 1)."""
    resolve_ids(config.user, config.group)
    check_may_switch_user(config.user, config.group)
    if config.pidfile:
        check_pidfile(config.pidfile)
    if config.state_file not in ("", "none"):
        check_writable(config.state_file)
    master.fd_limit = raise_fd_limit()
    if config.metrics_listen:  # first: nothing else to undo when it fails
        master.served.metrics = bind_metrics(config.metrics_listen)
    master.listeners.bind(config)
    if config.control:  # last: a failure after it would leave its file
        master.served.control = bind_control(config)
    if master.listeners.adopted():
        log.info("socket activation: listening on the sockets passed by systemd for "
                 + ", ".join(master.listeners.adopted()))


def run_daemon(config: Config, log: Logger,
               reload_config: Callable[[], Config] | None = None) -> int:
    """Run the daemon in the foreground (or detached with --daemonize); the exit status."""
    master = Master(config, log, reload_config)
    try:
        prepare(master, config, log)
    except (ConfigError, ListenError, OSError) as exc:
        master.listeners.cleanup(log)  # a unix socket bound before the failure
        message = str(exc) if not isinstance(exc, OSError) else (
            f"cannot start: {exc.strerror or exc}")
        log.error(message)
        if not log.to_stderr:
            print_error(message)
        return 2 if isinstance(exc, ConfigError) else 1
    ready_w = daemonize() if config.daemonize else -1
    pid = master.pid = os.getpid()
    try:
        try:
            if config.pidfile:
                write_pidfile(config.pidfile)
        except OSError as exc:
            message = f"cannot write pidfile {config.pidfile}: {exc.strerror}"
            log.error(message)
            if not log.to_stderr:
                print_error(message)
            return 1
        master.start()
        if ready_w >= 0:
            notify_ready(ready_w)
            ready_w = -1
        return master.run()
    except Exception as exc:  # noqa: BLE001 - a bug: one line in the log, never a traceback
        master.log.error(f"master internal error: {type(exc).__name__}: {exc}")
        if master.workers:
            master.kill_all(signal.SIGTERM)
        return 1
    finally:
        if os.getpid() == pid:
            master.cleanup()
            for sig in MASTER_SIGNALS[:-1]:  # a late signal must not change the exit status
                signal.signal(sig, signal.SIG_IGN)
