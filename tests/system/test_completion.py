"""Bash completion (completion.py): the generated scripts loaded in a real bash complete what a
user types (driven through COMP_WORDS, with the function `complete -p` names), offer every
option and command of the sources they are made from, and complete POOL/SERVICE and pool names
from a running daemon."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import Daemon
from testkit.repo import REPO, hapolicy_env

from hapolicy import check, completion, ctl
from hapolicy.config.options import OPTIONS
from hapolicy.monitor.commands import COMMANDS


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    where = tmp_path_factory.mktemp("completions")
    done = subprocess.run([sys.executable, "-m", "hapolicy.completion", "--dir", str(where)],
                          cwd=REPO, env=hapolicy_env(), capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0 and done.stderr == "", done
    assert sorted(p.name for p in where.iterdir()) == ["hapolicy", "hapolicyctl"]
    return where


def complete(scripts, line: str, path: str = "") -> list[str]:
    """What bash offers for the last word of `line` (a trailing blank: a new, empty word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = words[0]
    driver = (f"source {shlex.quote(str(scripts / program))}\n"
              f"spec=$(complete -p {program}) || exit 9\n"
              "function=${spec#*-F }; function=${function%% *}\n"
              f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
              "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
              f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
              '"$function" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" '
              '"${COMP_WORDS[COMP_CWORD-1]}"\n'
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = dict(os.environ, PATH=f"{path}:{os.environ['PATH']}" if path else os.environ["PATH"])
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True,
                          text=True, timeout=30, check=False, env=env, cwd=scripts)
    assert done.returncode == 0 and done.stderr == "", done
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_an_option_a_command_and_their_values(scripts):
    assert complete(scripts, "hapolicy --chec") == ["--check-config", "--check-interval",
                                                     "--check-down-interval", "--check-timeout",
                                                     "--check-rise", "--check-fall",
                                                     "--check-request"]
    assert complete(scripts, "hapolicy --check-c") == ["--check-config"]
    assert complete(scripts, "hapolicy --all-down ") == ["default", "try"]
    assert complete(scripts, "hapolicy -c hapolicy") == ["hapolicy", "hapolicyctl"]  # files
    assert complete(scripts, "hapolicy --user roo") == ["root"]
    assert complete(scripts, "hapolicy --workers ") == []
    assert complete(scripts, "hapolicyctl st") == ["status"]
    assert complete(scripts, "hapolicyctl --control /nowhere ch") == ["check"]
    assert complete(scripts, "hapolicyctl --control hapolicyc") == ["hapolicyctl"]  # a file
    assert complete(scripts, "hapolicyctl check --p") == ["--pool"]
    assert complete(scripts, "hapolicyctl check -w 5 --crit") == ["--critical"]


def test_every_option_and_command_is_offered(scripts):
    offered = set(complete(scripts, "hapolicy "))
    for option in OPTIONS:
        assert set(option.flags) <= offered, option.flags
    assert {"-h", "--help", "--version"} <= offered
    ctl_offered = set(complete(scripts, "hapolicyctl "))
    for usage, _ in COMMANDS:
        assert usage.split()[0] in ctl_offered, usage
    for key, _ in ctl.OPTIONS:
        assert {w.rstrip(",") for w in key.split() if w.startswith("-")} <= ctl_offered, key
    assert "check" in ctl_offered
    check_offered = set(complete(scripts, "hapolicyctl check "))
    for key, _ in check.OPTIONS:
        assert {w.rstrip(",") for w in key.split() if w.startswith("-")} <= check_offered, key
    # and the files are the generator's now (what the package installs: built by debian/rules)
    for name, script in completion.SCRIPTS.items():
        assert (scripts / name).read_text() == script()


def test_pool_and_service_names_come_from_the_running_daemon(scripts, tmp_path):
    program = tmp_path / "hapolicyctl"  # the command the user types, as installed
    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in hapolicy_env().items()
                           if k.startswith("PYTHON"))
    program.write_text(f"#!/bin/sh\ncd {shlex.quote(str(REPO))} && exec env {environment} "
                       f"{shlex.quote(sys.executable)} -m hapolicy.ctl \"$@\"\n")
    program.chmod(0o755)
    with FakeBackend(name="GREY1") as a, FakeBackend(name="GREY2") as b:
        daemon = Daemon("-s", a.spec(), "-s", b.spec(), workers=1)
        path = str(daemon.dir / "control")
        daemon.args += ["--control", path]
        with daemon.start():
            assert complete(scripts, f"hapolicyctl --control {path} disable def",
                            str(tmp_path)) == ["default/GREY1", "default/GREY2"]
            assert complete(scripts, f"hapolicyctl --control {path} weight default/GREY2",
                            str(tmp_path)) == ["default/GREY2"]
            assert complete(scripts, f"hapolicyctl --control {path} weight default/GREY2 ",
                            str(tmp_path)) == []  # N is the user's
            assert complete(scripts, f"hapolicyctl --control {path} check --pool ",
                            str(tmp_path)) == ["default"]
    assert complete(scripts, f"hapolicyctl --control {path} drain ", str(tmp_path)) == []
