"""End to end: a real Postfix runs OUR hapolicy through spawn(8), as the original was run.

One Postfix instance with three smtpd listeners, each with its own check_policy_service:

* MAIN (the instance's smtpd): policy inet:127.0.0.1:SPAWN, a spawn(8) entry running
  ``/usr/bin/python3 -m hapolicy -l -s PFW=<postfwd>:10 -s DEAD=<refused port>:20`` as nobody,
  in front of a real postfwd2 that REJECTs sender bad@example.org.
* ALLDEAD: policy inet:127.0.0.1:SPAWN_DEAD, a spawn(8) entry whose services are all refused,
  with ``-d { DEFER_IF_PERMIT policy service unavailable }``: master.cf groups an argument
  containing spaces with ``{ }`` (Postfix >= 3.0, master(5)), and spawn(8) passes it as ONE
  argument.
* ORIGINAL: the same two entries' services behind Debian's Perl /usr/sbin/hapolicy, so that
  the SMTP replies of the original and ours can be compared.

Debian's /usr/bin/python3 is used on purpose: it has no setproctitle, which spawn mode must not
need. Runs as root (Postfix's master); installs postfix, postfwd and hapolicy when missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.packages import require_packages
from testkit.ports import free_port, refused_port
from testkit.postfix import (
    PostfixInstance,
    Postfwd,
    requires_root,
    smtp_rcpt,
    spawn_entry,
)
from testkit.public import world_readable_copy
from testkit.repo import REPO

from hapolicy.config.records import parse_service
from hapolicy.spawn import statefile

REJECT_TEXT = "bad sender, says postfwd"
RULES = f"id=R1; sender==bad@example.org; action=REJECT {REJECT_TEXT}\n"
DEFAULT_ACTION = "DEFER_IF_PERMIT policy service unavailable"
RECIPIENT = "someone@example.net"
PLACEHOLDER = "DEFAULT_ACTION_PLACEHOLDER"

pytestmark = requires_root


def smtpd_with_policy(port: int, policy_port: int) -> str:
    """master.cf lines for one more smtpd on *port* whose policy is 127.0.0.1:*policy_port*."""
    return (
        f"127.0.0.1:{port} inet n - n - - smtpd\n"
        "  -o { smtpd_recipient_restrictions = check_policy_service "
        f"inet:127.0.0.1:{policy_port}, permit }}\n"
    )


class World:
    """postfwd2, and Postfix with the spawn(8) entries and their smtpd listeners."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.postfwd = Postfwd(tmp, RULES)
        self.spawn_port = free_port()
        self.spawn_dead_port = free_port()
        self.spawn_original_port = free_port()
        self.alldead_smtpd_port = free_port()
        self.original_smtpd_port = free_port()
        self.marker = ""  # an argument only our main entry's processes have
        self.state_files: list[str] = []  # made by our processes, as nobody: removed at stop
        self.postfix: PostfixInstance | None = None

    def start(self) -> None:
        require_packages("postfix", "postfwd", "hapolicy")
        pypath = world_readable_copy(REPO / "hapolicy", self.tmp / "pkg")
        ours = ["/usr/bin/env", f"PYTHONPATH={pypath}", "/usr/bin/python3", "-m", "hapolicy"]
        self.postfwd.start()
        self.marker = f"PFW=127.0.0.1:{self.postfwd.port}:10:1:5"
        services = ["-s", self.marker, "-s", f"DEAD=127.0.0.1:{refused_port()}:20:1:2"]
        dead_services = [
            "-s", f"DEAD1=127.0.0.1:{refused_port()}:10:1:2",
            "-s", f"DEAD2=127.0.0.1:{refused_port()}:20:1:2",
        ]  # fmt: skip
        nobody = pwd.getpwnam("nobody").pw_uid
        self.state_files = [
            statefile.default_path([parse_service(s) for s in specs[1::2]], {}, nobody)
            for specs in (services, dead_services)]
        # spawn_entry refuses white space: the { } grouping is put in afterwards
        dead = spawn_entry(self.spawn_dead_port, [*ours, "-d", PLACEHOLDER, *dead_services])
        dead = dead.replace(PLACEHOLDER, "{ " + DEFAULT_ACTION + " }")
        master = (
            spawn_entry(self.spawn_port, [*ours, "-l", *services])
            + dead
            + smtpd_with_policy(self.alldead_smtpd_port, self.spawn_dead_port)
            + spawn_entry(self.spawn_original_port, ["/usr/sbin/hapolicy", "-l", *services])
            + smtpd_with_policy(self.original_smtpd_port, self.spawn_original_port)
        )
        limits = "".join(
            f"127.0.0.1:{port}_time_limit = 3600\n"
            for port in (self.spawn_port, self.spawn_dead_port, self.spawn_original_port)
        )
        self.postfix = PostfixInstance(
            self.tmp,
            policy=f"check_policy_service inet:127.0.0.1:{self.spawn_port}",
            master_extra=master,
            # a broken policy service would otherwise cost 2 x 100 s per test
            main_extra=limits + "smtpd_policy_service_timeout = 20s\n",
        )
        self.postfix.start()

    def stop(self) -> None:
        for path in self.state_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if self.postfix is not None:
            self.postfix.stop()
        self.postfwd.stop()

    @property
    def smtpd_port(self) -> int:
        assert self.postfix is not None
        return self.postfix.smtpd_port

    def log(self) -> str:
        assert self.postfix is not None
        return self.postfix.log_text()

    def our_processes(self) -> list[int]:
        """Pids of the hapolicy processes spawned for the main entry."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hapolicy" in argv and self.marker.encode() in argv and b"spawn" not in argv[0]:
                pids.append(int(entry))
        return pids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("e2e_spawn"))
    try:
        w.start()
        yield w
    finally:
        w.stop()


TROUBLE = re.compile(
    r"malformed|problem talking|policy.*(warning|error)|(warning|error).*policy"
    r"|spawn.*(status|signal|warning)|command .* exit"
)


def policy_trouble(log: str) -> list[str]:
    """Log lines that say the policy conversation went wrong."""
    return [line for line in log.splitlines() if TROUBLE.search(line)]


def test_bad_sender_gets_postfwd_reject(world: World) -> None:
    code, text = smtp_rcpt(world.smtpd_port, "bad@example.org", RECIPIENT)
    assert code == 554, text
    assert text.endswith(f"Recipient address rejected: {REJECT_TEXT}"), text
    world.postfix.wait_log(REJECT_TEXT)
    assert policy_trouble(world.log()) == []


def test_good_sender_passes(world: World) -> None:
    code, text = smtp_rcpt(world.smtpd_port, "good@example.org", RECIPIENT)
    assert code == 250, text
    assert policy_trouble(world.log()) == []


def test_several_transactions(world: World) -> None:
    """Several mails one after the other, on new SMTP connections (new spawned processes, or
    the same one when smtpd keeps its policy connection)."""
    for _ in range(3):
        assert smtp_rcpt(world.smtpd_port, "good@example.org", RECIPIENT)[0] == 250
        assert smtp_rcpt(world.smtpd_port, "bad@example.org", RECIPIENT)[0] == 554
    assert policy_trouble(world.log()) == []


def test_all_services_down_gives_default_action_with_spaces(world: World) -> None:
    code, text = smtp_rcpt(world.alldead_smtpd_port, "good@example.org", RECIPIENT)
    assert code == 450, text
    assert text.endswith("Recipient address rejected: policy service unavailable"), text
    world.postfix.wait_log("policy service unavailable")
    assert policy_trouble(world.log()) == []


def test_same_replies_as_the_original(world: World) -> None:
    """The Perl original behind the same services gives the same SMTP replies."""
    for sender in ("bad@example.org", "good@example.org"):
        ours = smtp_rcpt(world.smtpd_port, sender, RECIPIENT)
        original = smtp_rcpt(world.original_smtpd_port, sender, RECIPIENT)
        assert ours == original


def test_spawned_as_nobody_by_debian_python(world: World) -> None:
    """spawn(8) runs ours as user nobody with /usr/bin/python3 (no setproctitle there)."""
    assert smtp_rcpt(world.smtpd_port, "good@example.org", RECIPIENT)[0] == 250
    pids = world.our_processes()  # smtpd keeps its policy connection: the process lives on
    assert pids, "no spawned hapolicy process found"
    nobody = pwd.getpwnam("nobody").pw_uid
    for pid in pids:
        assert os.stat(f"/proc/{pid}").st_uid == nobody
        assert os.path.realpath(f"/proc/{pid}/exe").startswith("/usr/bin/python3")


def test_spawned_process_exits_when_smtpd_lets_go(world: World) -> None:
    """postfix reload makes the idle smtpd processes exit: each spawned hapolicy sees EOF on
    stdin and exits (no process left behind, no complaint from spawn(8))."""
    assert smtp_rcpt(world.smtpd_port, "good@example.org", RECIPIENT)[0] == 250
    pids = world.our_processes()
    assert pids
    world.postfix.postfix("reload")
    deadline = time.monotonic() + 15
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        assert time.monotonic() < deadline, f"spawned hapolicy still running: {pids}"
        time.sleep(0.1)
    assert smtp_rcpt(world.smtpd_port, "bad@example.org", RECIPIENT)[0] == 554
    assert policy_trouble(world.log()) == []
