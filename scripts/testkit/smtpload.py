"""SMTP load on a real Postfix: client threads sending RCPTs, each RCPT timed with its reply.

:class:`SmtpLoad` runs *threads* client threads against 127.0.0.1:*port*; each one opens SMTP
sessions one after the other (EHLO, MAIL FROM, *per_session* RCPT TO, QUIT), waiting *pause*
seconds after each RCPT's reply, until :meth:`~SmtpLoad.stop`. Every RCPT is kept as a
:class:`Rcpt` (when it was sent, how long its reply took, its code); a session that breaks
(Postfix's 421 after too many errors, a reset) is kept as an error and the thread opens the
next one. :func:`figures` sums them up in one line::

    with SmtpLoad(mx.smtpd_port) as load:
        time.sleep(20)
    print(figures("upgrade", load.rcpts, mx.log_text()))
"""

from __future__ import annotations

import smtplib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from testkit.ports import HOST

if TYPE_CHECKING:
    from typing_extensions import Self

PROBLEM = "problem talking to server"  # Postfix's policy client, when a request failed


@dataclass(frozen=True)
class Rcpt:
    """One RCPT TO: when it was sent (time.monotonic()), seconds until its reply, its code
    (0: no reply, the session broke)."""

    sent: float
    seconds: float
    code: int


class SmtpLoad:
    """Client threads sending RCPTs to a Postfix smtpd until :meth:`stop`; a context manager
    (started on entry, stopped and joined on exit)."""

    def __init__(self, port: int, threads: int = 16, per_session: int = 50,
                 pause: float = 0.0, timeout: float = 30.0) -> None:
        self.port = port
        self.per_session = per_session
        self.pause = pause
        self.timeout = timeout
        self.rcpts: list[Rcpt] = []
        self.errors: list[str] = []
        self.sessions = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True,
                                          name=f"smtp-{n}") for n in range(threads)]

    def start(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """No new RCPT; wait for the threads to close their sessions."""
        self._stop.set()
        for thread in self._threads:
            thread.join(max(0.0, timeout))
        assert not any(t.is_alive() for t in self._threads), "SMTP load threads did not end"

    def _run(self, n: int) -> None:
        session = 0
        while not self._stop.is_set():
            try:
                self._session(f"t{n}s{session}")
            except (OSError, smtplib.SMTPException) as exc:
                with self._lock:
                    self.errors.append(f"thread {n} session {session}: {exc!r}")
                self._stop.wait(0.05)  # a refused or broken session: not a busy loop
            session += 1

    def _session(self, ident: str) -> None:
        with smtplib.SMTP(HOST, self.port, local_hostname="client.example.org",
                          timeout=self.timeout) as smtp:
            with self._lock:
                self.sessions += 1
            smtp.ehlo("client.example.org")
            code, text = smtp.mail(f"{ident}@example.org")
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, f"{ident}@example.org")
            for k in range(self.per_session):
                if self._stop.is_set():
                    break
                started = time.monotonic()
                try:
                    code = smtp.rcpt(f"{ident}r{k}@example.net")[0]
                except smtplib.SMTPServerDisconnected:
                    self._keep(Rcpt(started, time.monotonic() - started, 0))
                    raise
                self._keep(Rcpt(started, time.monotonic() - started, code))
                self._stop.wait(self.pause)

    def _keep(self, rcpt: Rcpt) -> None:
        with self._lock:
            self.rcpts.append(rcpt)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def figures(label: str, rcpts: list[Rcpt], maillog: str, slow: float = 1.0) -> str:
    """One line: how many RCPTs, how many not answered 250, the longest reply, how many took
    over *slow* seconds, how many times Postfix logged a policy connection's failure."""
    not_250 = sum(1 for r in rcpts if r.code != 250)
    longest = max((r.seconds for r in rcpts), default=0.0)
    over = sum(1 for r in rcpts if r.seconds > slow)
    return (f"{label}: {len(rcpts):,} RCPTs, {not_250:,} not 250, max {longest:.2f} s, "
            f"{over} over {slow:g} s, {maillog.count(PROBLEM)} {PROBLEM!r}")
