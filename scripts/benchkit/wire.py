"""The policy protocol as the bench speaks it: requests, answers and their kinds, waiting.

Contract: make_request(n) is a ~600-byte smtpd_access_policy request (distinct per n), encoded
and read as the tests do (testkit.protocol); classify() sorts an answer as 'ok' (the backend's
own, byte for byte), 'default' (a proxy's default action, which it gives without asking the
backend) or 'wrong'; exchange_once and wait_answering never raise, they return why not ('' when
answered).
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any, Callable

from testkit.protocol import encode_attrs, read_frame

ANSWER = b"action=DUNNO hapolicy-bench\n\n"  # distinctive: no proxy makes it up
DEFAULT_ANSWER = b"action=dunno\n\n"  # the default action of hapolicy and the original


def make_request(n: int) -> bytes:
    """A typical Postfix 3.7 smtpd_access_policy request at RCPT (about 600 bytes)."""
    attrs = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", f"192.0.2.{n % 250 + 1}"),
        ("client_name", f"mail{n}.example.net"),
        ("client_port", str(40000 + n % 20000)),
        ("reverse_client_name", f"mail{n}.example.net"),
        ("server_address", "198.51.100.25"),
        ("server_port", "25"),
        ("helo_name", f"mail{n}.example.net"),
        ("sender", f"newsletter-{n}@lists.example.net"),
        ("recipient", f"user{n}@example.org"),
        ("recipient_count", "0"),
        ("queue_id", f"4Xk{n:06d}Zq9"),
        ("instance", f"{n:x}.655e0a1c.a1b2c.0"),
        ("size", "48213"),
        ("etrn_domain", ""),
        ("stress", ""),
        ("sasl_method", ""),
        ("sasl_username", ""),
        ("sasl_sender", ""),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", "TLSv1.3"),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
        ("encryption_keysize", "256"),
        ("policy_context", ""),
        ("compatibility_level", "3.6"),
        ("mail_version", "3.7.11"),
    ]
    return encode_attrs(dict(attrs))


def classify(answer: bytes, expected: bytes) -> str:
    """'ok' for the backend's own answer, 'default' for a default answer, else 'wrong'."""
    if answer == expected:
        return "ok"
    if answer.lower() == DEFAULT_ANSWER:
        return "default"
    return "wrong"


def exchange_once(addr: tuple[str, int], timeout: float) -> tuple[str, bytes]:
    """One request on a fresh connection: ('', answer) when answered with action=..., else
    (why not, b"")."""
    try:
        with socket.create_connection(addr, timeout=timeout) as sock:
            sock.sendall(make_request(0))
            data = read_frame(sock)
            if not data.endswith(b"\n\n"):
                return f"connection closed after {data[:60]!r}", b""
    except OSError as exc:
        return str(exc), b""
    if not data.startswith(b"action="):
        return f"bad answer {data[:60]!r}", b""
    return "", data


def wait_answering(addr: tuple[str, int], timeout: float, alive: Callable[[], bool]) -> str:
    """'' once addr answers a request, else why it did not within timeout."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            return "the process exited"
        why, _answer = exchange_once(addr, min(2.0, max(0.1, deadline - time.monotonic())))
        if not why:
            return ""
        time.sleep(0.05)
    return f"not answering after {timeout:g}s ({why})"


def wait_readable(fds: list[Any], timeout: float) -> list[Any]:
    """The fds (ints or objects with fileno) readable within timeout; poll(), not select():
    with --idle the bench holds thousands of descriptors, beyond select()'s 1024."""
    poller = select.poll()
    by_fd = {}
    for item in fds:
        fd = item if isinstance(item, int) else item.fileno()
        by_fd[fd] = item
        poller.register(fd, select.POLLIN)
    try:
        events = poller.poll(max(0.0, timeout) * 1000)
    except InterruptedError:
        return []
    return [by_fd[fd] for fd, _ev in events]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

