"""The Postfix policy protocol on the test side: requests, service specs, a client.

* :func:`request` -- a typical Postfix ``smtpd_access_policy`` request.
* :func:`service_spec` -- ``NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`` for hapolicy's ``-s``.
* :func:`encode_attrs`, :func:`parse_attrs`, :func:`split_frame` -- one request or answer.
* :class:`PolicyClient` -- a blocking client that speaks the policy protocol.

Protocol (Postfix SMTPD_POLICY_README): the client sends ``name=value`` lines ended by an
empty line; the server answers ``action=...`` and an empty line; many requests share one
persistent connection.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

from testkit.ports import HOST

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_PRIO = 10
DEFAULT_WEIGHT = 1


def service_spec(
    name: str,
    port: int,
    prio: int | None = None,
    weight: int | None = None,
    timeout: float | None = None,
    host: str = HOST,
) -> str:
    """Return ``NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]`` for hapolicy's ``-s`` option.

    Trailing ``None`` fields are omitted; a ``None`` before a given field is filled with the
    default (prio 10, weight 1).
    """
    if timeout is not None:
        prio = DEFAULT_PRIO if prio is None else prio
        weight = DEFAULT_WEIGHT if weight is None else weight
    if weight is not None and prio is None:
        prio = DEFAULT_PRIO
    fields = [host, str(port)] + [_fmt(v) for v in (prio, weight, timeout) if v is not None]
    return f"{name}={':'.join(fields)}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def encode_attrs(attrs: dict[str, Any]) -> bytes:
    """Encode ``attrs`` as ``name=value`` lines plus the final empty line; skip ``None`` values."""
    lines = []
    for name, value in attrs.items():
        if value is None:
            continue
        line = f"{name}={value}"
        if "\n" in line:
            raise ValueError(f"newline in attribute {name!r}")
        lines.append(line + "\n")
    return ("".join(lines) + "\n").encode()


def parse_attrs(raw: bytes) -> dict[str, str]:
    """Parse one request (``name=value`` lines) into a dict; the last duplicate wins."""
    attrs = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        if line:
            name, _, value = line.partition("=")
            attrs[name] = value
    return attrs


def split_frame(buf: bytes | bytearray) -> int:
    """Return the length of the first complete frame (ended by an empty line) in buf, or 0."""
    if buf[:1] == b"\n":
        return 1
    end = buf.find(b"\n\n")
    return end + 2 if end >= 0 else 0


def read_frame(sock: socket.socket, timeout: float | None = None) -> bytes:
    """Read from a blocking socket up to and including an empty line (b"..." cut at EOF)."""
    if timeout is not None:
        sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def request(**attrs: Any) -> bytes:
    """Build a typical Postfix RCPT-stage policy request; ``attrs`` override or extend it.

    An attribute given as ``None`` is omitted. The result ends with ``\\n\\n``.
    """
    base: dict[str, Any] = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "SMTP",
        "helo_name": "mail.example.org",
        "queue_id": "",
        "sender": "a@example.org",
        "recipient": "b@example.net",
        "recipient_count": "0",
        "client_address": "192.0.2.10",
        "client_name": "mail.example.org",
        "reverse_client_name": "mail.example.org",
        "instance": "2c8f.6738d1e7.c9b1a.0",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "size": "1234",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "etrn_domain": "",
        "stress": "",
        "server_address": "198.51.100.1",
        "server_port": "25",
    }
    base.update(attrs)
    return encode_attrs(base)


class PolicyClient:
    """A blocking policy-protocol client (like Postfix's side) for tests."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self._buf = bytearray()

    @classmethod
    def from_socket(cls, sock: socket.socket) -> PolicyClient:
        """Wrap an already connected socket (e.g. one end of a socketpair)."""
        client = cls.__new__(cls)
        client.sock = sock
        client._buf = bytearray()
        return client

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def ask(self, attrs: dict[str, Any] | bytes, timeout: float = 10) -> str:
        """Send one request (a dict of attributes, or raw bytes) and return the answer."""
        self.send_raw(attrs if isinstance(attrs, bytes) else encode_attrs(attrs))
        return self.read_answer(timeout)

    def read_answer(self, timeout: float = 10) -> str:
        """Return the next answer up to and including its empty line, e.g. "action=OK\\n\\n".

        Raises TimeoutError if none is complete in time, ConnectionError on EOF before.
        """
        deadline = time.monotonic() + timeout
        while True:
            size = split_frame(self._buf)
            if size:
                answer = bytes(self._buf[:size])
                del self._buf[:size]
                return answer.decode("utf-8", "replace")
            if not self._recv(deadline):
                raise ConnectionError(f"connection closed after {bytes(self._buf)[:200]!r}")

    def read_until_eof(self, timeout: float = 10) -> bytes:
        """Return everything (still unread) until the peer closes; a reset counts as EOF."""
        deadline = time.monotonic() + timeout
        try:
            while self._recv(deadline):
                pass
        except ConnectionResetError:
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _recv(self, deadline: float) -> bool:
        """Receive into the buffer before the deadline; return False on EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete answer in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        self._buf += data
        return bool(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def action_of(answer: str) -> str:
    """The action of an answer ("action=OK\\n\\n" -> "OK"); "<'line'>" when it has none."""
    line = answer.split("\n", 1)[0]
    return line[len("action="):] if line.startswith("action=") else f"<{line!r}>"


def fake_reply(mode: str, action: str, attr: str | None,
               attrs: dict[str, str]) -> tuple[bytes, bool] | None:
    """What the fake backend (backends.py) in `mode` writes for one request and whether it
    closes afterwards (None: nothing)."""
    if mode == "answer":
        return f"action={action}\n\n".encode(), False
    if mode == "echo":
        return f"action={attrs.get(attr or '', action)}\n\n".encode(), False
    fixed = {"garbage": (b"this is not a policy answer\n\n", False),
             "noaction": (b"foo=bar\n\n", False), "close_after_request": (b"", True),
             "partial": (b"action=DUN", True),
             "huge": (b"action=" + b"x" * 100000 + b"\n\n", False)}
    if mode in fixed:
        return fixed[mode]
    formats = {"crlf": "action={}\r\nextra=1\n\n", "extra": "action={}\nextra=1\n\n",
               "split": "action={}\n", "multiline": "foo=1\naction={}\naction=SECOND\n\n"}
    if mode in formats:
        return formats[mode].format(action).encode(), False
    return None  # silent (and close, whose connections never get here)
