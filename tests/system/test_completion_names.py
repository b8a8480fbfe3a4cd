"""Review of issue 32: the names bash completion reads from a control socket's `csv` are offered
as words, never run as shell code. `compgen -W WORDS` expands each of its words (parameters,
command substitution, arithmetic): a name read from the socket the user typed after --control
(any socket, any answer) must not reach it unquoted."""

from __future__ import annotations

import shlex
import subprocess
import sys

from testkit.fakecontrol import FakeControl
from testkit.repo import REPO, hapolicy_env

from hapolicy import completion


def test_a_name_from_the_socket_is_never_run(tmp_path):
    script = tmp_path / "hapolicyctl.bash"
    script.write_text(completion.hapolicyctl_script())
    program = tmp_path / "hapolicyctl"
    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in hapolicy_env().items()
                           if k.startswith("PYTHON"))
    program.write_text(f"#!/bin/sh\ncd {shlex.quote(str(REPO))} && exec env {environment} "
                       f"{shlex.quote(sys.executable)} -m hapolicy.ctl \"$@\"\n")
    program.chmod(0o755)
    marker = tmp_path / "ran"
    hostile = f"$(touch${{IFS}}{marker})"
    path = str(tmp_path / "control")
    with FakeControl(path, (f"# pool,service,address\n{hostile},S1,127.0.0.1:1\n"
                            f"default,{hostile},127.0.0.1:2\n").encode()):
        for line in (f"hapolicyctl --control {path} disable ",
                     f"hapolicyctl --control {path} check --pool "):
            words = shlex.split(line) + [""]
            driver = (f"source {shlex.quote(str(script))}\n"
                      f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
                      "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
                      '_hapolicyctl "${COMP_WORDS[0]}" "" "${COMP_WORDS[COMP_CWORD-1]}"\n')
            subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True,
                           text=True, timeout=30, check=False, cwd=tmp_path,
                           env={**hapolicy_env(), "PATH": f"{tmp_path}:/usr/bin:/bin"})
            assert not marker.exists(), f"completing {line!r} ran a command from the socket's csv"
