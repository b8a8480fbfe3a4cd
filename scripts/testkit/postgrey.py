"""A real postgrey (Debian's package) on 127.0.0.1 with a database of its own.

:class:`Postgrey` runs ``postgrey --inet=127.0.0.1:PORT --dbdir=DIR`` in the foreground as a
subprocess, as user postgrey (postgrey drops to it; the database directory is made its own),
with a short greylisting delay, no auto-whitelisting and no whitelists, so that every new
triplet is greylisted once and passes when retried after the delay. It never uses the
system's /var/lib/postgrey nor its service's port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.packages import require_packages
from testkit.ports import HOST, free_port
from testkit.processes import listening
from testkit.wait import wait_for

if TYPE_CHECKING:
    from typing_extensions import Self

POSTGREY = "/usr/sbin/postgrey"


class Postgrey:
    """One postgrey server; use as a context manager."""

    def __init__(self, delay: int = 2, port: int | None = None) -> None:
        self.delay = delay
        self.port = port if port is not None else free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def spec_address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        require_packages("postgrey")
        self.dir = Path(tempfile.mkdtemp(prefix="hap-postgrey-", dir="/tmp"))
        user = pwd.getpwnam("postgrey")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.proc = subprocess.Popen(
            [POSTGREY, f"--inet={HOST}:{self.port}", f"--dbdir={self.dir}",
             f"--delay={self.delay}", "--auto-whitelist-clients=0", "--max-age=1",
             "--retry-window=1", "--whitelist-clients=/dev/null",
             "--whitelist-recipients=/dev/null", "--hostname=postgrey.test"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.dir.with_suffix(".log"), "wb"))  # noqa: SIM115
        try:
            wait_for(lambda: self.proc.poll() is not None or listening(self.port), 20,
                     interval=0.05, what=f"postgrey to listen on {self.port}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgrey exited: {self.log_text()}")
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        assert self.dir is not None
        try:
            return self.dir.with_suffix(".log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            with_log = self.dir.with_suffix(".log")
            with_log.unlink(missing_ok=True)
            self.dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
