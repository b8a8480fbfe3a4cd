"""The config file reader (hapolicy/config/file.py) on arbitrary files (Hypothesis).

Any file is either a Config (whose --check-config summary can be printed) or a ConfigError
whose text is one line; an error of a line names it as `FILE:LINE:`, LINE counted as sed and
editors count lines (by LF), and that line is a setting or a section, not a blank or a
comment. The files are drawn from every setting's key (both spellings, any case) with good and odd
values, services, [pool] sections, comments and garbage.

Issue 27's findings in the config reader (a line split by U+2028 and what else str.splitlines
takes for a line end, or by a lone CR; NUL in the default action; a fail-answer nested too
deep or repeated too often) have their own properties below.
"""

from __future__ import annotations

import os
import re
import tempfile

from hypothesis import example, given
from hypothesis import strategies as st

from hapolicy.base.protocol import format_action
from hapolicy.config.file import assemble, read_config_file
from hapolicy.config.options import DAEMON, FILE_KEYS, SETTINGS, summary
from hapolicy.config.records import ConfigError

# what str.splitlines() (and a lone CR, universal newlines) takes for a line end, LF and CRLF
# aside: in a value, each once split the line (issue 27)
SPLITLINES = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


# a good value or two of each setting (by Config field), so that files get past one line
GOOD = {
    "default_action": ("dunno", "DEFER_IF_PERMIT later"), "log_requests": ("yes", "no"),
    "verbose": ("no",), "log_stderr": ("no",), "daemonize": ("no",), "sticky_instance": ("yes",),
    "total_timeout": ("0.5", "60"), "connect_timeout": ("5",), "syslog_socket": ("/dev/log",),
    "listen": ("127.0.0.1:10060", "[::1]:10061", "unix:/run/h.sock", ""),
    "workers": ("1", "4"), "max_use": ("1000",), "backlog": ("16",), "max_idle": ("30",),
    "retire_timeout": ("30",), "drain_timeout": ("0", "30"), "summary_interval": ("0", "60"),
    "pidfile": ("", "/run/h/pid"), "control": ("", "/run/h/control"), "control_group": ("",),
    "user": ("",), "group": ("",), "metrics_listen": ("", "127.0.0.1:9100"),
    "socket_mode": ("0660",), "cooldown": ("2", "90"), "cooldown_max": ("60", "1"),
    "state_file": ("", "none", "/run/h/state"), "check_interval": ("0", "5"),
    "check_down_interval": ("1",), "check_timeout": ("5",), "check_rise": ("2",),
    "check_fall": ("2",), "check_request": ("request=smtpd_access_policy sender=a@b",),
    "all_down": ("default", "try"), "balance": ("weighted", "hash:client_address/24,sender"),
    "fail_answer": ("", "^5"), "policy_context": ("*", "submission", "smtpd"),
    "shadow": ("", "a", "b", "c"), "shadow_share": ("50", "100"), "hedge": ("", "0.05", "p99"),
    "hedge_max": ("5",),
}
SERVICES = ("A=127.0.0.1:10023", "B=[::1]:10023:5:2:3", "C=unix:/run/p.sock", "D=h:1:::",
            "A=127.0.0.1:10024", "E=h:99999", "=h:1", "F=h", "G=h:1:x")
VALUES = ("", "0", "1", "-1", "0.05", "1e999", "nan", "inf", "9" * 40, "yes", "on", "weighted",
          "hash:", "hash:a/129", "p100", "*", "0999", "unix:relative", "127.0.0.1:0", "a,b",
          "request=x y=z", "(", "other", *SERVICES)
values = st.one_of(st.sampled_from(VALUES),
                   st.text(max_size=30).map(lambda t: "".join(c for c in t
                                                              if c not in "\n\0")))


def spelled(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from((key, key.replace("_", "-"), key.upper(), f" {key} "))


@st.composite
def settings(draw) -> str:
    """A setting; now and then an unknown key, an odd value or separator."""
    name = draw(st.sampled_from(sorted(FILE_KEYS) + ["nonsense"]))
    option = FILE_KEYS.get(name)
    good = GOOD.get(option.key, ()) if option else ()
    value = draw(st.sampled_from(good) if good and draw(st.integers(0, 9)) else values)
    separator = draw(st.sampled_from(("=", " = ", " = ", "= ", " =", " = ", "==")))
    return draw(spelled(name)) + separator + value


services = st.one_of(st.sampled_from(SERVICES[:4]), st.sampled_from(SERVICES[:4]),
                     st.sampled_from(SERVICES), values).map(
    lambda spec: f"service = {spec}")
odd_lines = st.one_of(
    st.sampled_from(("", "   ", "# a comment", "  # indented", "[pool]", "[", "]", "[other a]",
                     "[pool a", "=", "no equals sign", "[pool x" + "x" * 64 + "]",
                     "[pool bad name]")),
    st.text(max_size=20).map(lambda t: "".join(c for c in t if c != "\n")))
line_ends = st.sampled_from(("\n", "\n", "\n", "\r\n"))
pool_names = st.sampled_from(("a", "b", "c", "pool-1"))


@st.composite
def config_files(draw) -> str:
    """Settings and services, then maybe [pool] sections of their own; odd values, and now
    and then an odd line anywhere."""
    body = draw(st.lists(settings(), max_size=5)) + draw(st.lists(services, max_size=3))
    for name in draw(st.lists(pool_names, max_size=3)):
        body.append(f"[pool {name}]")
        body += draw(st.lists(st.one_of(settings(), services, services), max_size=5))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        body.insert(draw(st.integers(0, len(body))), draw(odd_lines))
    return "".join(line + draw(line_ends) for line in body)


DAEMON_KEYS = sorted(k for k, o in SETTINGS.items() if o.scope == DAEMON)
POOL_KEYS = sorted(k for k, o in SETTINGS.items() if o.scope != DAEMON)


@st.composite
def good_lines(draw, keys: list[str]) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=6))
    lines = [f"{draw(spelled(k))} = {draw(st.sampled_from(GOOD.get(k, ('',))))}" for k in chosen]
    specs = draw(st.lists(st.sampled_from(SERVICES[:4]), unique=True, min_size=1, max_size=3))
    return lines + [f"service = {spec}" for spec in specs]


@st.composite
def good_files(draw) -> str:
    """Every line good on its own, each setting once: what is tested is how the whole is put
    together (pools, listen addresses, policy contexts, shadows, cool-downs)."""
    pools = draw(st.lists(pool_names, unique=True, max_size=3))
    if not pools:
        return "\n".join(draw(good_lines(DAEMON_KEYS + POOL_KEYS))) + "\n"
    body = [line for line in draw(good_lines(DAEMON_KEYS)) if not line.startswith("service")]
    for name in pools:
        body += [f"[pool {name}]", *draw(good_lines(POOL_KEYS))]
    return "\n".join(body) + "\n"


def load(text: str, encoding: str = "utf-8") -> tuple[str, object]:
    """(path, the Config or the ConfigError) of a file holding text."""
    fd, path = tempfile.mkstemp(suffix=".conf")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode(encoding, "surrogatepass"))
        try:
            return path, assemble(read_config_file(path), {}, [])
        except ConfigError as exc:
            return path, exc
    finally:
        os.unlink(path)


def check(text: str) -> object:
    """The properties of any file: a Config whose summary prints, or a one-line error that
    names a line of the file holding a setting or a section."""
    path, result = load(text)
    if not isinstance(result, ConfigError):
        assert summary(result)  # type: ignore[arg-type]
        return result
    message = str(result)
    assert len(message.splitlines()) == 1 and "\n" not in message, message
    named = re.match(re.escape(path) + r":(\d+): ", message)
    if named:
        number = int(named.group(1))
        file_lines = text.split("\n")
        assert 1 <= number <= len(file_lines), message
        line = file_lines[number - 1].strip()
        assert line and not line.startswith("#"), message
    return result


@given(config_files())
def test_any_file_is_a_config_or_a_one_line_error_naming_its_line(text):
    check(text)


@given(good_files())
def test_any_file_of_good_lines_is_a_config_or_a_one_line_error_naming_its_line(text):
    check(text)


@given(st.text(max_size=200))
def test_any_text_is_a_config_or_a_one_line_error(text):
    check(text)


@given(st.binary(max_size=60))
def test_bytes_that_are_not_utf8_are_a_one_line_error(data):
    fd, path = tempfile.mkstemp(suffix=".conf")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            read_config_file(path)
        except ConfigError as exc:
            assert len(str(exc).splitlines()) == 1
            assert str(exc).startswith(path)
    finally:
        os.unlink(path)


# settings whose value is free text: a line end inside one can only be cut, not refused
TEXT_KEYS = st.sampled_from(("default", "syslog-socket", "pidfile", "user", "control-group",
                             "fail-answer", "check-request"))


def with_value(key: str, value: str) -> str:
    return f"service = A=127.0.0.1:10023\n{key} = {value}\n"


@given(TEXT_KEYS, st.sampled_from(SPLITLINES))
@example("default", "\u2028")
@example("default", "\x85")
def test_a_value_with_a_unicode_line_end_is_read_as_one_line(key, separator):
    check(with_value(key, f"a{separator}b"))


@given(TEXT_KEYS)
@example("default")
def test_a_value_with_a_lone_cr_is_read_as_one_line(key):
    check(with_value(key, "a\rb"))


@given(st.text(max_size=20).map(lambda t: "".join(c for c in t if c != "\n")))
@example("a\0b")
def test_a_default_action_makes_a_one_line_answer(action):
    result = check(f"service = A=127.0.0.1:10023\ndefault = {action}\n")
    if not isinstance(result, ConfigError):
        answer = format_action(result.default_action)  # type: ignore[attr-defined]
        assert b"\0" not in answer and answer.find(b"\n") == len(answer) - 2


nested = st.builds(lambda depth, inner: "(" * depth + inner + ")" * depth,
                   st.sampled_from((1, 10, 100, 1000, 10000)), st.sampled_from(("", "x", "a|b")))


@given(nested)
@example("(" * 1000 + ")" * 1000)
def test_a_nested_fail_answer_is_a_config_or_a_one_line_error(regex):
    check(f"service = A=127.0.0.1:10023\nfail-answer = {regex}\n")


@given(st.integers(0, 10 ** 20).map(lambda n: f"x{{{n}}}"))
@example("x{99999999999}")
def test_a_fail_answer_repetition_is_a_config_or_a_one_line_error(regex):
    check(f"service = A=127.0.0.1:10023\nfail-answer = {regex}\n")
