"""Every configuration value has bounds, declared with its option in the table (options.py):
a value outside them is one line on stderr and exit status 2, from `--check-config` and from
a daemon start, before any socket is bound; never a traceback, never a worker that dies at boot.

The cases of issue 27 run as real processes (`python -m hapolicy`); the walk over the option
table is in-process, so that no option can be added without bounds.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
from testkit.daemon import short_tmpdir
from testkit.processes import kill_session
from testkit.repo import REPO, command, hapolicy_env, run_hapolicy

from hapolicy import manpage
from hapolicy.cli import load_config, make_parser
from hapolicy.config.file import MAX_FILE_BYTES, MAX_LINE, MAX_POOLS, read_config_file
from hapolicy.config.option import Value, bounds_of
from hapolicy.config.options import BOUNDS_RULE, OPTIONS, SERVICE_FIELDS
from hapolicy.config.parsers import parse_fail_answer, parse_service
from hapolicy.config.values import (
    MAX_PRIO,
    MAX_SECONDS,
    MAX_SERVICES,
    MAX_WEIGHT,
    ConfigError,
    fmt_num,
)
from hapolicy.man import roff

CONFIGURATION = (REPO / "docs" / "configuration.md").read_text()
SERVICE = "A=127.0.0.1:1"
NESTED = "(" * 1000 + ")" * 1000

# (id, command-line arguments, the config file's text or None, what the error line says after
# `hapolicy: error: `; {file} is the config file's path)
CASES = [
    ("weight of 400 digits", ["-s", "A=127.0.0.1:1::" + "9" * 400], None,
     "service A: weight '" + "9" * 40 + "'... must be at most 10000"),
    ("backlog", ["-s", SERVICE, "--backlog", "99999999999999999999"], None,
     "--backlog: backlog '99999999999999999999' must be at most 65535"),
    ("control group number", ["-s", SERVICE, "--control-group", "99999999999999999999"], None,
     "--control-group: control group '99999999999999999999': a group number is 0 to "
     "4294967294"),
    ("control group of other digits", ["-s", SERVICE, "--control-group", "\u00b2"], None,
     "--control-group: control group '\u00b2': a group number is 0 to 4294967294"),
    ("fail-answer of 1000 nested groups", ["-s", SERVICE, "--fail-answer", NESTED], None,
     "--fail-answer: fail-answer is longer than 512 characters"),
    ("fail-answer no bytes pattern", ["-s", SERVICE, "--fail-answer", r"\N{DIGIT ONE}"], None,
     r"--fail-answer: fail-answer '\\N{DIGIT ONE}' is not a regular expression: bad escape \N "
     "at position 0"),
    ("U+0085 in a value of the file", [],
     f"service = {SERVICE}\ndefault = DUNNO\x85workers = 3\n",
     "{file}:2: default action 'DUNNO\\x85workers = 3' has an unprintable character (U+0085)"),
    ("U+2028 in a value of the file", [],
     f"service = {SERVICE}\ndefault = DUNNO\u2028workers = 3\n",
     "{file}:2: default action 'DUNNO\\u2028workers = 3' has an unprintable character (U+2028)"),
    ("NUL in the default action", [], f"service = {SERVICE}\ndefault = DUN\0NO\n",
     "{file}:2: default action 'DUN\\x00NO' has an unprintable character (U+0000 NUL)"),
    ("CR in the default action", ["-s", SERVICE, "-d", "DUNNO\rREJECT"], None,
     "--default: default action 'DUNNO\\rREJECT' has an unprintable character (U+000D CR)"),
    ("control character in a check attribute",
     ["-s", SERVICE, "--check-request", "request=smtpd_access_policy sender=a\x1bb"], None,
     "--check-request: check request 'request=smtpd_access_policy sender=a\\x1bb' has an "
     "unprintable character (U+001B)"),
    ("service timeout of 1e300", ["-s", "A=127.0.0.1:1:::1e300"], None,
     "service A: timeout '1e300' must be at most 86400 seconds"),
]


def _args(tmp: Path, args: list[str], text: str | None) -> tuple[list[str], str]:
    if text is None:
        return args, ""
    path = tmp / "bad.conf"
    path.write_bytes(text.encode())
    return ["-c", str(path), *args], str(path)


def assert_one_line_error(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr == f"hapolicy: error: {expected}\n", stderr[-2000:]


@pytest.mark.parametrize("args, text, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check_config_refuses_with_one_line(tmp_path, args, text, expected):
    argv, path = _args(tmp_path, args, text)
    done = run_hapolicy([*argv, "--check-config"])
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    assert done.stdout == ""
    assert_one_line_error(done.stderr, expected.replace("{file}", path))


@pytest.mark.parametrize("args, text, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_daemon_start_refuses_before_binding(args, text, expected):
    """The daemon, with a unix listen socket and a control socket: it exits 2 with the same
    line, and neither socket file was made (nor left behind)."""
    directory = short_tmpdir()
    try:
        argv, path = _args(directory, args, text)
        argv += ["--listen", f"unix:{directory}/listen", "--control", f"{directory}/control",
                 "--workers", "1", "--syslog-socket", ""]
        proc = subprocess.Popen(command(argv), cwd=REPO, env=hapolicy_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            out, err = b"", b"it did not exit: it runs with that value"
        finally:
            kill_session(proc.pid)  # what a start that went on left running
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        left = sorted(p.name for p in directory.iterdir() if not p.name.endswith(".conf"))
        assert left == [], f"left behind: {left}"
        assert proc.returncode == 2, (proc.returncode, err.decode(errors="replace")[-2000:])
        assert out == b""
        assert_one_line_error(err.decode(errors="replace"), expected.replace("{file}", path))
    finally:
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


# --- the option table: no option without bounds ---------------------------------------------

def _values() -> list[tuple[str, Value]]:
    return [(option.flags[-1], option.parse) for option in OPTIONS]


def _refused(value: Value, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        value(text)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("flag, value", _values(), ids=[f for f, _ in _values()])
def test_every_option_has_bounds(flag, value):
    """Each option of the table reads its value through a Value: a most length, printable
    characters only; a number has a least and a largest value, and refuses nan and inf; the
    bounds are said, but where the tag says them (a switch, a choice)."""
    option = next(o for o in OPTIONS if o.flags[-1] == flag)
    assert isinstance(value, Value), flag
    assert 0 < value.length <= 4096, flag
    assert bounds_of(option) or option.flag or option.choices, f"{flag}: bounds not said"
    assert "longer than" in _refused(value, "9" * (value.length + 1))
    for char in ("\0", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\udcff"):
        assert "unprintable character" in _refused(value, f"a{char}b"), (flag, char)
    if option.metavar in ("S", "N", "PERCENT", "MODE", "S|pNN"):
        assert value.low is not None and value.high is not None, f"{flag}: a number's range"
    if value.high is None:
        return
    assert value.length <= 32
    value(fmt_num(value.high))
    for text in (fmt_num(value.high * 10 + 1), fmt_num(value.low - 1), "nan", "inf", "-inf",
                 "1e400", "9" * value.length, "1_0", "\u0661"):
        _refused(value, text)
    assert math.isfinite(value.high) and value.high <= MAX_SECONDS * 1e5


def test_the_fields_of_a_service_have_bounds():
    assert [f[0] for f in SERVICE_FIELDS] == ["PRIO", "WEIGHT", "TIMEOUT"]
    assert all(bounds for *_, bounds in SERVICE_FIELDS)
    good = parse_service(f"A=h:1:{MAX_PRIO}:{MAX_WEIGHT}:{fmt_num(MAX_SECONDS)}")
    assert (good.prio, good.weight, good.timeout) == (MAX_PRIO, MAX_WEIGHT, MAX_SECONDS)
    for spec, said in ((f"A=h:1:{MAX_PRIO + 1}", "priority"),
                       (f"A=h:1::{MAX_WEIGHT + 1}", "weight"),
                       ("A=h:1:::86401", "timeout"), ("A=h:1:::inf", "timeout"),
                       ("A=" + "h" * 254 + ":1", "host longer than 253"),
                       ("A=h:1:" + "1" * 600, "longer than 512")):
        with pytest.raises(ConfigError, match=said):
            parse_service(spec)


def test_the_bounds_are_in_help_man_pages_and_manual():
    parser = make_parser()
    helped = {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}
    pages = {name: make() for name, make in manpage.PAGES.items()}
    for option in OPTIONS:
        bounds = bounds_of(option)
        if not bounds:
            continue
        assert f"bounds: {bounds}" in helped[option.flags[-1]].replace("%%", "%"), option.flags
        assert f"Bounds: {roff.escape(bounds)}." in pages["hapolicy.8"], option.flags
        if option.key:
            assert f"Bounds: {roff.escape(bounds)}." in pages["hapolicy.conf.5"], option.name
        assert f"| {bounds} |" in CONFIGURATION, option.flags
    for *_, bounds in SERVICE_FIELDS:
        assert f"Bounds: {roff.escape(bounds)}." in pages["hapolicy.conf.5"]
    assert BOUNDS_RULE in " ".join(CONFIGURATION.split())
    rule = re.sub(r"\s+", " ", roff.inline(BOUNDS_RULE))
    for name in ("hapolicy.8", "hapolicy.conf.5"):
        assert rule in re.sub(r"\s+", " ", pages[name]), name


# --- regular expressions, the file -----------------------------------------------------------

def test_a_pattern_too_deep_for_re_is_a_one_line_error():
    """Below the length bound no pattern nests deep enough; the parser still turns the
    RecursionError of one that does into a one-line error."""
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_fail_answer("(" * 2000 + ")" * 2000)
    with pytest.raises(ConfigError, match="repetition number is too large"):
        parse_fail_answer("a{99999999999}")


def test_only_a_newline_ends_a_line_of_the_file(tmp_path):
    path = tmp_path / "h.conf"
    path.write_bytes(f"service = {SERVICE}\r\n# a comment\x85 with U+0085\n"
                     "default = DEFER busy\n".encode())
    parsed = read_config_file(str(path))
    assert parsed.top.settings == {"default_action": "DEFER busy"}
    assert parsed.top.lines == {"service": 1, "service A": 1, "default_action": 3}


def test_the_file_and_its_lines_have_bounds(tmp_path):
    big = tmp_path / "big.conf"
    big.write_text(f"service = {SERVICE}\n" + "# filler\n" * (MAX_FILE_BYTES // 9 + 1))
    with pytest.raises(ConfigError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        read_config_file(str(big))
    long = tmp_path / "long.conf"
    long.write_text(f"service = {SERVICE}\ndefault = {'x' * MAX_LINE}\n")
    with pytest.raises(ConfigError) as err:
        read_config_file(str(long))
    assert str(err.value) == f"{long}:2: line longer than {MAX_LINE} characters"


def test_services_and_pools_are_counted(tmp_path):
    specs = [f"S{i}=127.0.0.1:{i + 1}" for i in range(MAX_SERVICES + 1)]
    with pytest.raises(ConfigError, match=f"^more than {MAX_SERVICES} services$"):
        load_config([arg for spec in specs for arg in ("-s", spec)])
    services = tmp_path / "services.conf"
    services.write_text("".join(f"service = {spec}\n" for spec in specs))
    with pytest.raises(ConfigError) as err:
        read_config_file(str(services))
    assert str(err.value) == f"{services}:{MAX_SERVICES + 1}: more than {MAX_SERVICES} services"
    pools = tmp_path / "pools.conf"
    pools.write_text("".join(f"[pool p{i}]\nservice = {SERVICE}\n" for i in range(MAX_POOLS + 1)))
    with pytest.raises(ConfigError) as err:
        read_config_file(str(pools))
    assert str(err.value) == f"{pools}:{2 * MAX_POOLS + 1}: more than {MAX_POOLS} pools"
