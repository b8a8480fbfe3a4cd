"""End-to-end checks of scripts/testkit/postfix.py with real Postfix, postfwd2 and spawn(8).

No hapolicy here: postfwd2 (or a tiny spawned Python policy) is Postfix's
check_policy_service directly, which proves the harness before hapolicy is put between.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import time
from pathlib import Path

import pytest
from testkit.packages import require_packages
from testkit.ports import free_port
from testkit.postfix import (
    PostfixInstance,
    Postfwd,
    requires_root,
    smtp_rcpt,
    spawn_entry,
)
from testkit.processes import listening, session_pids
from testkit.public import world_readable_copy

RULES = "id=R1; sender==bad@example.org; action=REJECT go away\n"
REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    "client_address=127.0.0.1\nsender={sender}\nrecipient=someone@example.net\n\n"
)

SPAWNED_POLICY = '''\
"""Answer every policy request with a REJECT that names our uid."""
import os
import sys

for line in sys.stdin:
    if line == "\\n":
        sys.stdout.write(f"action=REJECT spawned uid={os.getuid()}\\n\\n")
        sys.stdout.flush()
'''


def test_spawn_entry_syntax() -> None:
    text = spawn_entry(10099, ["/usr/bin/env", "A=b", "/usr/bin/python3", "-m", "pkg"])
    assert text == (
        "127.0.0.1:10099 inet n n n - 0 spawn\n"
        "  user=nobody argv=/usr/bin/env A=b /usr/bin/python3 -m pkg\n"
    )
    with pytest.raises(ValueError):
        spawn_entry(10099, ["/bin/echo", "two words"])


def test_world_readable_copy(tmp_path: Path) -> None:
    src = tmp_path / "src" / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sub" / "mod.py").write_text("X = 1\n")
    (src / "__pycache__").mkdir()
    os.chmod(src / "sub" / "mod.py", 0o600)
    pypath = world_readable_copy(src, tmp_path / "copy")
    pkg = pypath / "pkg"
    assert (pkg / "sub" / "mod.py").read_text() == "X = 1\n"
    assert not (pkg / "__pycache__").exists()
    assert stat.S_IMODE(os.stat(pkg / "sub" / "mod.py").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(pkg / "sub").st_mode) == 0o755
    for parent in (pkg, *pkg.parents):  # every user can reach it
        assert os.stat(parent).st_mode & stat.S_IXOTH, parent


@requires_root
def test_require_packages_is_fast_when_present() -> None:
    require_packages("postfix", "postfwd")
    started = time.monotonic()
    require_packages("postfix", "postfwd")
    assert time.monotonic() - started < 1


def test_a_missing_package_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "hapolicy-test-no-such-package"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=missing):
        require_packages(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_packages(missing)


@requires_root
def test_postfwd_answers_and_stops(tmp_path: Path) -> None:
    with Postfwd(tmp_path, RULES) as postfwd:
        pid = postfwd.pid
        assert pid is not None and session_pids(pid)
        with socket.create_connection(("127.0.0.1", postfwd.port), timeout=10) as sock:
            f = sock.makefile("rwb")
            for sender, action in (
                ("bad@example.org", "REJECT go away"),
                ("good@example.org", "DUNNO"),
            ):
                f.write(REQUEST.format(sender=sender).encode())
                f.flush()
                assert f.readline() == f"action={action}\n".encode()
                assert f.readline() == b"\n"
    assert not session_pids(pid)
    assert not listening(postfwd.port)


@requires_root
def test_postfix_with_postfwd_policy(tmp_path: Path) -> None:
    with Postfwd(tmp_path, RULES) as postfwd:
        policy = f"check_policy_service inet:127.0.0.1:{postfwd.port}"
        with PostfixInstance(tmp_path, policy=policy) as postfix:
            assert Path("/etc/postfix") not in (postfix.config_dir, *postfix.config_dir.parents)
            code, text = smtp_rcpt(postfix.smtpd_port, "bad@example.org", "someone@example.net")
            assert code == 554 and "go away" in text, (code, text)
            code, text = smtp_rcpt(postfix.smtpd_port, "good@example.org", "someone@example.net")
            assert code == 250, (code, text)
            postfix.wait_log("from=<bad@example.org> to=<someone@example.net>")
            master = postfix.master_pid
            assert master is not None and session_pids(master)
        assert not session_pids(master), "postfix processes left after stop()"
        assert not listening(postfix.smtpd_port)
        assert "Recipient address rejected: go away" in postfix.log_text()


@requires_root
def test_spawn_entry_runs_python_policy_as_nobody(tmp_path: Path) -> None:
    pkg = tmp_path / "spawnpolicy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(SPAWNED_POLICY)
    pypath = world_readable_copy(pkg, tmp_path / "public")
    port = free_port()
    argv = ["/usr/bin/env", f"PYTHONPATH={pypath}", "/usr/bin/python3", "-m", "spawnpolicy"]
    with PostfixInstance(
        tmp_path,
        policy=f"check_policy_service inet:127.0.0.1:{port}",
        master_extra=spawn_entry(port, argv),
    ) as postfix:
        code, text = smtp_rcpt(postfix.smtpd_port, "anyone@example.org", "someone@example.net")
        master = postfix.master_pid
        assert master is not None
    assert not session_pids(master), "spawned or postfix processes left after stop()"
    nobody = pwd.getpwnam("nobody").pw_uid
    assert code == 554 and f"spawned uid={nobody}" in text, (code, text)
