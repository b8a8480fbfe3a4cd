"""cmdline.py reads the command line as argparse does, wherever it answers at all.

cmdline.parse returns None for anything it leaves to argparse; where it returns values, they
must be exactly argparse's. Thousands of command lines made of tricky tokens are read both
ways; and the command lines hapolicy is used with must be read without argparse.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from hapolicy.cli import UsageError, make_parser, parse_command_line
from hapolicy.config import cmdline

TOKENS = [
    "-s", "--service", "A=127.0.0.1:1", "B=[::1]:2:5:2:3", "-sA=h:1", "-s=A=h:1", "-sd", "-d",
    "--default", "--default=X", "--default=", "DEFER later", "", "-l", "-v", "-L", "-lv",
    "-ldX", "-ld", "-ld=X", "-vl", "-lL", "-lx", "-l=x", "--logging", "--logging=yes",
    "--all-down", "try", "default", "bogus", "--all-down=try", "--all-down=x",
    "--sticky-instance", "yes", "no", "-c", "/etc/hapolicy.conf", "--check-config", "--",
    "-", "-x", "-1", "--total-timeout", "5", "-0.5", "--cooldown=2", "-h", "--help",
    "--version", "--serv", "--serv=C=h:3", "--def=Y", "--s", "--de", "--log", "--check",
    "--listen", "127.0.0.1:10060", "-d X", "--default X", "--state-file", "/run/x",
    "--state-file=none", "-sX", "-s -x", "--workers", "2",
]

COMMON = [
    ["-s", "GREY1=10.0.0.1:10023"],
    ["-l", "-s", "GREY1=10.0.0.1:10023:10", "-s", "GREY2=10.0.0.2:10023:20", "-d",
     "DEFER_IF_PERMIT policy service unavailable"],
    ["-lv", "-L", "--service=A=h:1", "-sB=h:2", "-ldDUNNO", "--serv", "C=h:3", "--def", "OK"],
    ["--listen", "127.0.0.1:10060", "--user", "nobody", "--group", "nogroup", "--workers", "2",
     "-s", "A=h:1", "--all-down", "try", "--sticky-instance=no", "--check-config"],
    ["-c", "/etc/hapolicy.conf", "--connect-timeout", "1", "--cooldown", "2",
     "--state-file", "/run/hapolicy/health", "-s", "A=h:1"],
]


def argparse_reading(parser, argv):
    """argparse's values, or the exception type it ends with (errors, --help, --version)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return vars(parser.parse_args(argv))
    except (UsageError, SystemExit) as exc:
        return type(exc)


def test_where_cmdline_answers_argparse_agrees():
    parser = make_parser()
    rng = random.Random(20240601)
    answered = 0
    for _ in range(6000):
        argv = cmdline.expand_original_abbreviations(
            [rng.choice(TOKENS) for _ in range(rng.randint(0, 6))])
        ours = cmdline.parse(argv)
        if ours is None:
            continue
        answered += 1
        assert argparse_reading(parser, argv) == ours, argv
    assert answered > 300  # the comparison is not empty


@pytest.mark.parametrize("argv", COMMON, ids=[" ".join(a)[:40] for a in COMMON])
def test_the_command_lines_in_use_need_no_argparse(argv):
    expanded = cmdline.expand_original_abbreviations(argv)
    ours = cmdline.parse(expanded)
    assert ours is not None
    assert ours == argparse_reading(make_parser(), expanded)


def test_what_cmdline_leaves_to_argparse_still_works():
    assert parse_command_line(["--total-timeout", "-1", "-s", "A=h:1"])["total_timeout"] == "-1"
    with pytest.raises(UsageError, match="--bogus"):
        parse_command_line(["--bogus"])


def test_every_option_has_a_destination_and_flags_are_unique():
    flags = [flag for option in cmdline.OPTIONS for flag in option.flags]
    assert len(flags) == len(set(flags))
    assert set(cmdline.LONG) | set(cmdline.SHORT) == set(flags)
