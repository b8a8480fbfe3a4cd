"""hapolicyctl: send one command to a running daemon's control socket and print the answer.

    hapolicyctl [--control PATH | -c CONFIG] COMMAND [ARGS]
    hapolicyctl [--control PATH | -c CONFIG] ask [--dry-run] POOL [ATTR=VALUE ...]

The socket is PATH, or the `control = PATH` line of the daemon's config file CONFIG (before
any `[pool ...]` section), or DEFAULT_PATH when neither is given. Commands: see commands.py
(`hapolicyctl help` asks the daemon; `hapolicyctl --help` prints the options and
commands.COMMANDS without it). Exit status (EXIT_STATUS): 0, or 1 when the answer is an
`error:` line, 2 for a usage error or a socket that cannot be reached (one line on stderr).
`hapolicyctl check` is a Monitoring Plugins check (check.py), with the plugins' exit statuses.
OPTIONS and EXIT_STATUS are also hapolicyctl(8)'s text (manpage.py).

`ask` sends its request on the lines after the command line (monitor/control.py): each
ATTR=VALUE argument is one line, or without any, standard input's `name=value` lines (as Postfix
sends them) up to an empty line or its end, at most MAX_REQUEST_BYTES read; the daemon judges
them as a live request (a line without `=` or a request over a limit is an `error:` line). Its
answer may take the pool's total timeout: after the request is sent, the wait is the daemon's
to bound.
"""

from __future__ import annotations

import socket
import sys
import time

from hapolicy.base.protocol import MAX_REQUEST_BYTES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import BinaryIO

DEFAULT_PATH = "/run/hapolicy/control"
TIMEOUT = 10.0
MAX_ANSWER = 16 << 20  # bytes: the csv of thousands of services fits many times
USAGE = "usage: hapolicyctl [--control PATH | -c CONFIG] COMMAND [ARGS]"
ASK_USAGE = "       hapolicyctl [--control PATH | -c CONFIG] ask [--dry-run] POOL [ATTR=VALUE ...]"
#: The options, as --help and hapolicyctl(8) (manpage.py) say them.
OPTIONS = (
    ("--control PATH", ("the daemon's control socket (its `--control`, or `control` in its "
     "config file)")),
    ("-c, --config CONFIG", "the daemon's config file: the socket is its `control` line"),
    ("-h, --help", "print the options and the commands, and exit"),
)
EXIT_STATUS = (
    ("0", "the daemon answered"),
    ("1", "the answer is an `error:` line (an unknown command or name, a peer not allowed)"),
    ("2", "a usage error, or a socket that cannot be reached (one line on stderr)"),
)
CHECK_TITLE = ("check [OPTIONS]: the Monitoring Plugins check (not sent as such: it reads "
               "`pools` twice), one line, exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN "
               "(hapolicyctl(8) says when); its options:")


class UsageError(Exception):
    pass


def path_from_config(path: str) -> str:
    """The `control` setting of a config file ('' when it has none)."""
    value = ""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.strip()
            if line.startswith("["):
                break
            key, eq, rest = line.partition("=")
            if eq and key.strip() == "control":
                value = rest.strip()
    return value


def parse(argv: Sequence[str]) -> tuple[str, str]:
    """(socket path, command line) from the arguments; UsageError when they are wrong."""
    args = list(argv)
    path = config = ""
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            raise UsageError("")
        if flag.startswith("--control="):
            path = flag.partition("=")[2]
            continue
        if flag not in ("--control", "-c", "--config") or not args:
            raise UsageError(f"unknown option or missing value: {flag}")
        value = args.pop(0)
        if flag == "--control":
            path = value
        else:
            config = value
    if path and config:
        raise UsageError("give --control or -c, not both")
    if not args:
        raise UsageError("no command")
    if config:
        try:
            path = path_from_config(config)
        except OSError as exc:
            raise UsageError(f"cannot read {config}: {exc.strerror}") from None
        if not path:
            raise UsageError(f"{config} sets no control socket (control = PATH)")
    if args[0].lower() == "ask":
        return path or DEFAULT_PATH, ask_text(args[1:])
    return path or DEFAULT_PATH, " ".join(args)


def ask_text(args: Sequence[str], stdin: BinaryIO | None = None) -> str:
    """`ask [--dry-run] POOL`, then the request's lines (from args, else from stdin when it is
    not a terminal) and its empty line but for the last LF (`ask` adds it)."""
    words = [a for a in args if a == "--dry-run"]
    rest = [a for a in args if a != "--dry-run"]
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        raise UsageError("usage: ask [--dry-run] POOL [ATTR=VALUE ...]")
    pool, attrs = rest[0], rest[1:]
    if any("\n" in a or "\r" in a for a in attrs):
        raise UsageError("an attribute with a line break")
    if any(not a for a in attrs):
        raise UsageError("an empty attribute (it would end the request)")
    if attrs:
        body = "".join(a + "\n" for a in attrs)
    else:
        if stdin is None:
            stdin = sys.stdin.buffer if sys.stdin is not None else None
        body = read_request(stdin) if stdin is not None and not stdin.isatty() else ""
    return " ".join(["ask", *words, pool]) + "\n" + body


def read_request(stdin: BinaryIO) -> str:
    """A request's name=value lines from stdin, up to an empty line or its end (CR LF or LF);
    at most MAX_REQUEST_BYTES and a line (the daemon refuses what is over)."""
    data = bytearray()
    for raw in iter(lambda: stdin.readline(MAX_REQUEST_BYTES + 2), b""):
        line = raw.rstrip(b"\r\n")
        if not line:
            break
        data += line + b"\n"
        if len(data) > MAX_REQUEST_BYTES:
            break
    return data.decode("utf-8", "surrogateescape")


def ask(path: str, line: str, timeout: float = TIMEOUT, patient: bool = False) -> str:
    """Send one command line, read the answer until the daemon closes, within `timeout` in
    all and MAX_ANSWER bytes; OSError (TimeoutError) on failure. patient: wait as long as the
    daemon takes to answer (it bounds an ask's wait)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line.encode("utf-8", "surrogateescape") + b"\n")
        chunks, size = [], 0
        while True:
            if not patient:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no whole answer within {timeout:g}s")
                sock.settimeout(left)
            else:
                sock.settimeout(None)
            data = sock.recv(65536)
            if not data:
                break
            size += len(data)
            if size > MAX_ANSWER:
                raise OSError(f"an answer over {MAX_ANSWER} bytes")
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def help_text() -> str:
    """USAGE, the options and the commands (commands.COMMANDS), wrapped to 79 columns."""
    import textwrap

    from hapolicy.check import OPTIONS as CHECK_OPTIONS
    from hapolicy.monitor.commands import COMMANDS

    out = [USAGE, ASK_USAGE, ""]
    for title, rows in (("options:", OPTIONS), ("commands:", COMMANDS),
                        (CHECK_TITLE, CHECK_OPTIONS)):
        out.append(textwrap.fill(title.replace("`", ""), 79))
        for key, text in rows:
            out.append(textwrap.fill(text.replace("`", ""), 79, initial_indent=f"  {key:22} ",
                                     subsequent_indent=" " * 25))
    return "\n".join(out) + "\n"


def is_check(args: Sequence[str]) -> bool:
    """Whether the command is `check` (check.py), which answers a usage error as UNKNOWN."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if "=" in args[i] or args[i] in ("-h", "--help") else 2
    return i < len(args) and args[i] == "check"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        path, line = parse(args)
    except UsageError as exc:
        if not str(exc):  # --help
            print(help_text(), end="")
            return 0
        if is_check(args):
            print(f"HAPOLICY UNKNOWN - {exc}")
            return 3
        print(f"hapolicyctl: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    if line.split()[:1] == ["check"]:
        from hapolicy.check import run

        return run(path, line.split()[1:], ask)
    try:
        text = ask(path, line, patient=line.startswith("ask"))
    except OSError as exc:
        print(f"hapolicyctl: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not text:  # the monitor ended meanwhile (a reload replaces it)
        print(f"hapolicyctl: {path}: no answer: the daemon closed the connection",
              file=sys.stderr)
    sys.stdout.write(text)
    return 1 if text.startswith("error:") or not text else 0


if __name__ == "__main__":
    sys.exit(main())
