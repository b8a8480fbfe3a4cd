"""Real Postfix and real postfwd2 for hapolicy's end-to-end tests.

Everything listens on 127.0.0.1 only and needs root (Postfix's master runs as root). The
Debian packages are installed by scripts/run-tests; a missing one fails the test in CI and
skips it elsewhere (:func:`testkit.packages.require_packages`).

* :data:`requires_root` -- the mark of a test that needs root.
* :class:`Postfwd` -- a postfwd2 policy server with its own rules, pidfile and cache socket.
* :class:`PostfixInstance` -- a Postfix instance with its OWN config, queue and data
  directories, started with ``postfix -c DIR start``; it never touches /etc/postfix's instance.
* :func:`smtp_rcpt` -- EHLO, MAIL FROM, RCPT TO; returns the RCPT reply.
* :func:`spawn_entry` -- master.cf lines for a spawn(8) policy service.

Postfix processes (user ``postfix``) and spawned programs (user ``nobody``) cannot reach
pytest's ``tmp_path`` (``/tmp/pytest-of-root`` is mode 700), so whatever they must read
lives in a private directory under /tmp (mode 755, removed by ``stop()``) unless the given
workdir is already traversable by everyone (testkit/public.py).

Typical use::

    with Postfwd(tmp_path, "id=R1; sender==bad@example.org; action=REJECT go away") as pf, \\
         PostfixInstance(tmp_path, policy=f"check_policy_service inet:127.0.0.1:{pf.port}") as mx:
        code, text = smtp_rcpt(mx.smtpd_port, "bad@example.org", "someone@example.net")

A spawn(8) service runs its argv without a shell and with a clean environment, so pass
PYTHONPATH through env(1)::

    pypath = world_readable_copy(Path("hapolicy"), tmp_path / "pkg")
    argv = ["/usr/bin/env", f"PYTHONPATH={pypath}", "/usr/bin/python3", "-m", "hapolicy", ...]
    PostfixInstance(tmp_path, policy="check_policy_service inet:127.0.0.1:10099",
                    master_extra=spawn_entry(10099, argv))
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import pytest

from testkit.packages import require_packages
from testkit.ports import HOST, free_port
from testkit.processes import kill_session, listening, session_pids, wait_session_gone
from testkit.public import public_dir

if TYPE_CHECKING:
    from typing_extensions import Self

POSTFIX = "/usr/sbin/postfix"
POSTFWD2 = "/usr/sbin/postfwd2"

requires_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs a real Postfix master",
)


# --------------------------------------------------------------------------- helpers


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _Service:
    """Context-manager plumbing shared by :class:`Postfwd` and :class:`PostfixInstance`."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- postfwd


class Postfwd(_Service):
    """A real postfwd2 policy server on 127.0.0.1:*port*, running as nobody/nogroup.

    *rules* is postfwd's rule text, e.g. ``id=R1; sender==bad@example.org; action=REJECT
    go away``. postfwd2 daemonises into its own session (master, cache and policy processes);
    :meth:`stop` kills that whole session. Its logs go to syslog, if any.
    """

    def __init__(self, workdir: Path, rules: str, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.rules = rules
        self.port = port if port is not None else free_port()
        self.dir: Path | None = None
        self._temporary = False
        self.pid: int | None = None

    def start(self, timeout: float = 20) -> None:
        """Start postfwd2 and wait until it accepts connections."""
        require_packages("postfwd")
        self.dir, self._temporary = public_dir(
            self.workdir / f"postfwd-{self.port}", "hapolicy-postfwd-"
        )
        rules = self.dir / "rules.cf"
        rules.write_text(self.rules.rstrip("\n") + "\n")
        rules.chmod(0o644)
        run = self.dir / "run"  # pidfile and cache socket, written as nobody
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        shutil.chown(run, "nobody", "nogroup")
        pidfile = run / "postfwd2.pid"
        cmd = [
            POSTFWD2, "--file", str(rules),
            "--interface", HOST, "--port", str(self.port),
            "--cache_socket", f"unix::{run / 'cache.socket'}",
            "--pidfile", str(pidfile),
            "--user", "nobody", "--group", "nogroup",
            "--nodns", "--summary", "0",
        ]  # fmt: skip
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"postfwd2 failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while True:
            self.pid = self.pid or _read_pid(pidfile)
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    pass
            except OSError:
                pass
            else:  # the cache daemon makes its socket; without it every request fails
                if self.pid is not None and (run / "cache.socket").exists():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postfwd2 does not accept on {HOST}:{self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate postfwd2's session (TERM, then KILL) and remove its private files."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)  # the master terminates its children
            except ProcessLookupError:
                pass
            if not wait_session_gone(self.pid, 5):
                kill_session(self.pid)
            self.pid = None
        if self.dir is not None:
            shutil.rmtree(self.dir / "run", ignore_errors=True)
            if self._temporary:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# --------------------------------------------------------------------------- postfix

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = mx.hapolicy-test.invalid
mydomain = hapolicy-test.invalid
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {restrictions}
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0s
smtp_dns_support_level = disabled
default_transport = discard:hapolicy test instance
relay_transport = discard:hapolicy test instance
local_transport = discard:hapolicy test instance
biff = no
"""


class PostfixInstance(_Service):
    """A real Postfix instance on 127.0.0.1:*smtpd_port* with its own directories.

    *policy* goes in smtpd_recipient_restrictions before the final ``permit`` (e.g.
    ``check_policy_service inet:127.0.0.1:10060``); every client on 127.0.0.1 may relay to any
    domain, so the policy alone decides. Accepted mail would be discarded (no delivery, no DNS).
    *master_extra* and *main_extra* are appended verbatim to master.cf and main.cf (a parameter set
    again in main_extra overrides ours). Logs go to ``maillog`` in the instance's directory
    (postlogd), see :meth:`log_text`. ``self.dir`` holds ``etc/`` (the config directory),
    ``queue/``, ``data/`` and ``maillog``.
    """

    def __init__(
        self,
        workdir: Path,
        smtpd_port: int | None = None,
        policy: str = "",
        master_extra: str = "",
        main_extra: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.smtpd_port = smtpd_port if smtpd_port is not None else free_port()
        self.policy = policy
        self.master_extra = master_extra
        self.main_extra = main_extra
        self.dir: Path | None = None
        self._temporary = False
        self._saved_log = self.workdir / f"postfix-{self.smtpd_port}.maillog"
        self.master_pid: int | None = None

    @property
    def config_dir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "etc"

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``postfix -c CONFIG_DIR ARGS...`` (e.g. ``reload``) and return its result."""
        done = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed ({done.returncode}): {done.stdout}"
                f"{done.stderr}\n--- maillog ---\n{self.log_text()}"
            )
        return done

    def start(self) -> None:
        """Write the configuration and start the instance's master; return when it listens."""
        require_packages("postfix")
        self.dir, self._temporary = public_dir(
            self.workdir / f"postfix-{self.smtpd_port}", "hapolicy-postfix-"
        )
        self.config_dir.mkdir(exist_ok=True)
        (self.dir / "queue").mkdir(exist_ok=True)  # postfix fills it; data/ it makes itself
        restrictions = ", ".join(r for r in (self.policy.strip(), "permit") if r)
        main = _MAIN_CF.format(root=self.dir, restrictions=restrictions)
        (self.config_dir / "main.cf").write_text(main + self.main_extra + "\n")
        master = _MASTER_CF.format(listen=f"{HOST}:{self.smtpd_port}".ljust(9))
        (self.config_dir / "master.cf").write_text(master + self.master_extra + "\n")
        try:
            self.postfix("start")  # runs "postfix check", creates queue/ and data/
            self.master_pid = _read_pid(self.dir / "queue" / "pid" / "master.pid")
            deadline = time.monotonic() + 10
            while not listening(self.smtpd_port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix does not listen on {HOST}:{self.smtpd_port}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """``postfix stop``; ``postfix abort`` and SIGKILL when that does not end every
        process of the instance's session (master and its children) within 10 s."""
        if self.dir is None:
            return
        pid = self.master_pid or _read_pid(self.dir / "queue" / "pid" / "master.pid")
        if pid is not None and session_pids(pid):
            self.postfix("stop", check=False)
            if not wait_session_gone(pid, 10):
                self.postfix("abort", check=False)
                kill_session(pid)
        self.master_pid = None
        if self._temporary:
            log = self.dir / "maillog"
            if log.exists():
                shutil.copyfile(log, self._saved_log)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_text(self) -> str:
        """What this instance logged (also after :meth:`stop`); "" when nothing yet."""
        for path in ((self.dir / "maillog") if self.dir else None, self._saved_log):
            if path is not None and path.exists():
                return path.read_text(errors="replace")
        return ""

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """Wait until *text* appears in :meth:`log_text` (postlogd writes asynchronously)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log}")
            time.sleep(0.05)
        return log


# --------------------------------------------------------------------------- SMTP


def smtp_rcpt(
    port: int,
    sender: str,
    recipient: str,
    helo: str = "client.example.org",
    timeout: float = 60,
    source: str = "",
) -> tuple[int, str]:
    """EHLO, MAIL FROM:<sender>, RCPT TO:<recipient> at 127.0.0.1:*port*, then QUIT; from
    the address *source* (e.g. 127.0.0.2: Postfix's client_address) when given.

    Returns the RCPT TO reply as (code, text). Raises smtplib.SMTPSenderRefused when
    MAIL FROM is not accepted.
    """
    source_address = (source, 0) if source else None
    with smtplib.SMTP(HOST, port, local_hostname=helo, timeout=timeout,
                      source_address=source_address) as smtp:
        smtp.ehlo(helo)
        code, text = smtp.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, text, sender)
        code, text = smtp.rcpt(recipient)
    return code, text.decode("utf-8", "replace")


# --------------------------------------------------------------------------- spawn(8)


def spawn_entry(port: int, argv: list[str], user: str = "nobody") -> str:
    """master.cf lines for a spawn(8) service on 127.0.0.1:*port* running *argv* as *user*.

    spawn(8) connects the client socket to the program's stdin and stdout, runs *argv*
    without a shell and with a clean environment (only export_environment), so pass any
    variable through ``/usr/bin/env NAME=VALUE ...``. Arguments must not contain white
    space (master.cf splits on it).
    """
    if not argv or any(not arg or any(c.isspace() for c in arg) for arg in argv):
        raise ValueError(f"spawn argv must be non-empty words without white space: {argv!r}")
    return f"{HOST}:{port} inet n n n - 0 spawn\n  user={user} argv={' '.join(argv)}\n"


