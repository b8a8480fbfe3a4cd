r"""Data-driven request cases: tests/cases/*.case, each run through the real hapolicy (spawn mode).

A case file::

    # Comment lines (and blank lines) before the first section are ignored.
    args: -d "DEFER_IF_PERMIT policy service unavailable" -s {DEAD} -s {b=ECHO}:20:1:2
    status: 0
    === input
    request=smtpd_access_policy
    sender=someone@example.org\r

    === output
    action=someone@example.org

    === received b
    request=smtpd_access_policy
    sender=someone@example.org

    === end

Header lines, before the first section:

* ``args:`` (required) hapolicy's command line, split like a shell does (quotes work).
  A placeholder ``{KIND}`` or ``{NAME=KIND}`` stands for a fake service and becomes
  ``NAME=127.0.0.1:PORT`` (NAME defaults to KIND in lower case); write PRIO, WEIGHT and
  TIMEOUT after it as usual (``{b=SILENT}:10:1:1``). Each case gets fresh backends; the same
  placeholder twice means the same backend. KIND is one of:

  ====================  ========================================================
  ECHO                  answers ``action=<sender>`` (``action=NO_SENDER`` if none)
  OK                    answers ``action=OK``
  SLOW                  answers ``action=SLOW`` after 0.3 s
  MULTILINE             answers ``foo=1``, ``action=OK``, ``action=SECOND``
  DEAD                  nothing listens: connect is refused
  SILENT                reads requests, never answers (give it a short TIMEOUT)
  GARBAGE, NOACTION,    the FakeBackend modes of the same names (scripts/testkit/backends.py)
  CLOSE, PARTIAL, HUGE,
  CLOSE_AFTER_REQUEST
  ====================  ========================================================

* ``status:`` the expected exit status (default 0).

A header line that starts with a space or TAB continues the one before it.

Sections run from a ``=== NAME`` line to the next ``===`` line; the file must end with
``=== end`` so that trailing empty lines stay visible and no editor can strip them.

* ``=== input`` (required) the bytes sent to hapolicy's stdin, then EOF.
* ``=== output`` (required) every byte hapolicy must write (stdout and stderr are one socket,
  as under spawn(8)) before it exits.
* ``=== received NAME`` (optional, repeatable) exactly what the backend NAME was sent.

In a section every line of the file is one line of the stream and ends with LF: an empty
line in the file is an empty line of the protocol. Escapes: ``\r`` CR, ``\t`` TAB, ``\\`` a
backslash, ``\xHH`` any byte, and ``\c`` at the end of a line: no LF after this line (a
stream that ends in the middle of a line). Lines are read as UTF-8.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.ports import refused_port
from testkit.spawn import run_once

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CASES = Path(__file__).parent / "cases"
PLACEHOLDER = re.compile(r"\{(?:([A-Za-z0-9_.-]+)=)?([A-Z_]+)\}")
ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[rt\\]|c$)")
BACKENDS = {
    "ECHO": {"mode": "echo", "attr": "sender", "action": "NO_SENDER"},
    "OK": {"mode": "answer", "action": "OK"},
    "SLOW": {"mode": "answer", "action": "SLOW", "delay": 0.3},
    "MULTILINE": {"mode": "multiline", "action": "OK"},
    "SILENT": {"mode": "silent"},
    "GARBAGE": {"mode": "garbage"},
    "NOACTION": {"mode": "noaction"},
    "CLOSE": {"mode": "close"},
    "CLOSE_AFTER_REQUEST": {"mode": "close_after_request"},
    "PARTIAL": {"mode": "partial"},
    "HUGE": {"mode": "huge"},
}


class CaseError(ValueError):
    pass


@dataclass
class Case:
    name: str
    args: list[str]
    input: bytes
    output: bytes
    status: int = 0
    received: dict[str, bytes] = field(default_factory=dict)


def unescape_line(line: str) -> bytes:
    """One line of a section to its bytes, LF included unless it ends with \\c."""
    raw = line.encode("utf-8")
    end = b"\n"

    def replace(match: re.Match) -> bytes:
        nonlocal end
        code = match.group(1)
        if code == b"c":
            end = b""
            return b""
        if code.startswith(b"x"):
            return bytes([int(code[1:], 16)])
        return {b"r": b"\r", b"t": b"\t", b"\\": b"\\"}[code]

    if re.search(rb"\\(?!x[0-9A-Fa-f]{2}|[rt\\]|c$)", raw.replace(b"\\\\", b"")):
        raise CaseError(f"unknown escape in {line!r}")
    return ESCAPE.sub(replace, raw) + end


def parse_case(path: Path) -> Case:
    lines = path.read_text(encoding="utf-8").split("\n")
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    ended = False
    last_key = ""
    for number, line in enumerate(lines, 1):
        if ended:
            if line.strip():
                raise CaseError(f"{path.name}:{number}: text after '=== end'")
            continue
        if line.startswith("==="):
            title = line[3:].strip()
            if title == "end":
                ended = True
                continue
            if title in sections:
                raise CaseError(f"{path.name}:{number}: section {title!r} given twice")
            if title not in ("input", "output") and not re.fullmatch(r"received \S+", title):
                raise CaseError(f"{path.name}:{number}: unknown section {title!r}")
            current = sections[title] = []
        elif current is not None:
            current.append(line)
        elif line[:1] in (" ", "\t") and line.strip() and last_key:
            header[last_key] += " " + line.strip()  # a continuation line
        elif line.strip() and not line.startswith("#"):
            key, sep, value = line.partition(":")
            if not sep or key.strip() not in ("args", "status"):
                raise CaseError(f"{path.name}:{number}: expected 'args:' or 'status:'")
            last_key = key.strip()
            header[last_key] = value.strip()
    if not ended:
        raise CaseError(f"{path.name}: must end with '=== end'")
    for needed in ("input", "output"):
        if needed not in sections:
            raise CaseError(f"{path.name}: no '=== {needed}' section")
    if "args" not in header:
        raise CaseError(f"{path.name}: no 'args:' line")

    def body(title: str) -> bytes:
        return b"".join(unescape_line(line) for line in sections[title])

    return Case(
        name=path.stem,
        args=shlex.split(header["args"]),
        input=body("input"),
        output=body("output"),
        status=int(header.get("status", "0")),
        received={t.split()[1]: body(t) for t in sections if t.startswith("received ")},
    )


def case_files() -> list[Path]:
    return sorted(CASES.glob("*.case"))


@pytest.fixture
def services() -> Iterator[dict[tuple[str, str], FakeBackend | int]]:
    """(name, KIND) -> backend (or refused port), made on first use in a case."""
    made: dict[tuple[str, str], FakeBackend | int] = {}
    yield made
    backends = [b for b in made.values() if isinstance(b, FakeBackend)]
    for backend in backends:
        backend.stop()
    for backend in backends:
        assert backend.errors == []


def expand(args: list[str], made: dict[tuple[str, str], FakeBackend | int]) -> list[str]:
    def replace(match: re.Match) -> str:
        kind = match.group(2)
        name = match.group(1) or kind.lower()
        if kind != "DEAD" and kind not in BACKENDS:
            raise CaseError(f"unknown placeholder kind {kind!r}")
        key = (name, kind)
        if key not in made:
            if kind == "DEAD":
                made[key] = refused_port()
            else:
                made[key] = FakeBackend(name=name, **BACKENDS[kind]).start()  # type: ignore[arg-type]
        backend = made[key]
        port = backend if isinstance(backend, int) else backend.port
        return f"{name}=127.0.0.1:{port}"

    return [PLACEHOLDER.sub(replace, arg) for arg in args]


def test_there_are_enough_cases() -> None:
    assert len(case_files()) >= 12


@pytest.mark.parametrize("path", case_files(), ids=lambda p: p.stem)
def test_case(path: Path, services, tmp_path: Path) -> None:
    case = parse_case(path)
    args = ["--syslog-socket", str(tmp_path / "nolog"), *expand(case.args, services)]
    status, output = run_once(args, case.input)
    assert output == case.output
    assert status == case.status
    backends = {name: b for (name, _), b in services.items() if isinstance(b, FakeBackend)}
    for name, expected in case.received.items():
        assert name in backends, f"'=== received {name}': no such backend in args"
        assert b"".join(backends[name].raw_requests) == expected


# -- the format itself -----------------------------------------------------------------------


def test_escapes() -> None:
    assert unescape_line("a=b\\r") == b"a=b\r\n"
    assert unescape_line("") == b"\n"
    assert unescape_line("x\\\\r\\t\\x00\\xff") == b"x\\r\t\x00\xff\n"
    assert unescape_line("partial\\c") == b"partial"
    assert unescape_line("j\u00f6rg") == "j\u00f6rg\n".encode()
    with pytest.raises(CaseError):
        unescape_line("bad \\q escape")


def test_parse_case(tmp_path: Path) -> None:
    path = tmp_path / "x.case"
    path.write_text('# c\nargs: -d "A B" -s {b=ECHO}:5\nstatus: 1\n=== input\nsender=x\\r\n\n'
                    "=== output\naction=x\n\n=== received b\nsender=x\n\n=== end\n")
    case = parse_case(path)
    assert case.args == ["-d", "A B", "-s", "{b=ECHO}:5"]
    assert (case.input, case.output, case.status) == (b"sender=x\r\n\n", b"action=x\n\n", 1)
    assert case.received == {"b": b"sender=x\n\n"}
    path.write_text("args: -s {OK}\n=== input\n\n=== output\n")
    with pytest.raises(CaseError, match="end"):
        parse_case(path)
