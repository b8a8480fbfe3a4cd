"""The policy delegation protocol: framing requests, parsing attributes, reading backend answers.

A request is `name=value` lines ended by an empty line (SMTPD_POLICY_README); CRLF is tolerated.
Requests are kept as the bytes received, so they can be relayed unchanged (but for CRLF line
ends, which become LF: Postfix never sends them and not every policy server takes them);
attributes are parsed only when something (logging, hashing) needs them.

Limits, so that a client cannot grow our memory without bound:

- MAX_REQUEST_BYTES (64 KiB): one request, all lines included. Postfix's are about 1 KiB.
- MAX_LINE_BYTES (8 KiB): one `name=value` line.
- MAX_ATTRIBUTES (1024): lines in one request. Postfix 3.7 sends about 40. A request of at most
  SHORT_REQUEST_BYTES cannot have more (no line is under 2 bytes), so its lines are not
  counted: nearly every request Postfix sends is that short (600 to 1200 bytes), and counting
  700 bytes costs 0.3 µs.

Bytes are tested for CR with `13 in data`: `b"\r" in data` first tries its operand as an
integer and formats the TypeError it gets, which costs more than the search itself. A read
taken whole (`RequestFramer.whole`, the lane) is tested on its skeleton: the read with all but
its LFs, CRs and `=` signs deleted, one pass in C (`bytes.translate`): one whole request with
every line an attribute is a skeleton whose first empty line is its end and that starts with
no LF and has no CR; a search of the skeleton is a search of a tenth of the bytes.

A request over a limit is skipped to its end and framed as a `Request` whose `error` says why;
the caller answers it with the default action. So is a request with a line that is not an
attribute (no `=`): Postfix never sends one, and relaying it would hand a service a request
that its parser may read in its own way. A backend answer is bounded by MAX_ANSWER_BYTES
(16 KiB; Postfix accepts actions up to 8192 characters).
"""

from __future__ import annotations

MAX_REQUEST_BYTES = 65536
MAX_LINE_BYTES = 8192
MAX_ATTRIBUTES = 1024
SHORT_REQUEST_BYTES = 2 * MAX_ATTRIBUTES
MAX_ANSWER_BYTES = 16384
NOT_ATTRIBUTES = "a line without `=`"
_ALL_BUT_LF_AND_EQUALS = bytes(b for b in range(256) if b not in b"\n=")
# what translate deletes to leave a read's skeleton: its LFs, CRs and `=` signs (whole, lane)
SKELETON_DELETES = bytes(b for b in range(256) if b not in b"\n\r=")


class Request:
    """One framed request: the raw bytes (relayed as received) or the reason it was refused."""

    __slots__ = ("_attrs", "error", "raw")

    def __init__(self, raw: bytes, error: str = "") -> None:
        self.raw = raw
        self.error = error
        self._attrs: dict[str, str] | None = None

    @property
    def attrs(self) -> dict[str, str]:
        if self._attrs is None:
            self._attrs = parse_attributes(self.raw)
        return self._attrs

    def attr_bytes(self, name: bytes) -> bytes:
        """One attribute's raw value without parsing the rest (b'' when absent)."""
        raw = self.raw
        key = name + b"="
        if raw.startswith(key):
            start = len(key)
        else:
            pos = raw.find(b"\n" + key)
            if pos < 0:
                return b""
            start = pos + 1 + len(key)
        return raw[start : raw.find(b"\n", start)].rstrip(b"\r")

    def instance(self) -> bytes:
        """The `instance` attribute (attr_bytes(b"instance"), asked of every request)."""
        raw = self.raw
        pos = raw.find(b"\ninstance=")
        if pos < 0:
            return self.attr_bytes(b"instance")  # first, or absent
        start = pos + 10
        return raw[start : raw.find(b"\n", start)].rstrip(b"\r")


def parse_attributes(raw: bytes) -> dict[str, str]:
    """name=value lines to a dict; the value keeps every '=' after the first; later names win."""
    attrs: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        line = line.removesuffix("\r")
        name, sep, value = line.partition("=")
        if sep:
            attrs[name] = value
    return attrs


def check_limits(raw: bytes) -> str:
    """'' when a complete request (LF line ends) is within the limits and every line of it is
    an attribute, else why not."""
    if raw.count(b"\n") > MAX_ATTRIBUTES + 1:
        return f"more than {MAX_ATTRIBUTES} attributes"
    if len(raw) > MAX_LINE_BYTES and max(map(len, raw.split(b"\n"))) > MAX_LINE_BYTES:
        return f"a line longer than {MAX_LINE_BYTES} bytes"
    if not all_attributes(raw):
        return NOT_ATTRIBUTES
    return ""


def all_attributes(raw: bytes) -> bool:
    """Whether every line of a request (LF line ends, ended by its first empty line) has a `=`:
    with all but its line ends and `=` signs deleted (one pass in C), no empty line comes
    before the last one. An empty request (b"\n") has none to check."""
    skeleton = raw.translate(None, _ALL_BUT_LF_AND_EQUALS)
    return skeleton.find(b"\n\n") == len(skeleton) - 2 and skeleton[0] != 10 or len(raw) < 2


def _request_end(buf: bytes | bytearray, start: int) -> int:
    """Index just past the empty line that ends the request starting at `start`, or -1."""
    if buf[start : start + 1] == b"\n":
        return start + 1
    if buf[start : start + 2] == b"\r\n":
        return start + 2
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\n\r\n", start, lf + 2 if lf >= 0 else len(buf))
    if crlf >= 0:
        return crlf + 3
    return lf + 2 if lf >= 0 else -1


class RequestFramer:
    """Turns a client's byte stream into Requests, with bounded memory."""

    __slots__ = ("buffer", "skipping", "tail")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skipping = ""  # the reason while skipping an oversized request
        self.tail = b""  # last bytes seen while skipping, to find an end split across reads

    def feed(self, data: bytes, limit: int = 1 << 30) -> list[Request]:
        """Add data; return at most `limit` complete requests, keeping the rest buffered
        (call again with b"" for more)."""
        out: list[Request] = []
        if self.skipping and data:
            data = self._skip(data, out)
        buf = self.buffer
        if data:
            buf += data
        start = 0
        while start < len(buf) and len(out) < limit:
            end = _request_end(buf, start)
            if end < 0:
                break
            if end - start > MAX_REQUEST_BYTES:
                out.append(Request(b"", f"request larger than {MAX_REQUEST_BYTES} bytes"))
            else:
                raw = bytes(buf[start:end])
                if 13 in raw:
                    raw = raw.replace(b"\r\n", b"\n")
                if len(raw) > SHORT_REQUEST_BYTES:
                    out.append(Request(raw, check_limits(raw)))
                else:  # cannot be over a size limit
                    out.append(Request(raw, "" if all_attributes(raw) else NOT_ATTRIBUTES))
            start = end
        if start:
            del buf[:start]
        if len(out) < limit and len(buf) > MAX_REQUEST_BYTES:
            self.skipping = f"request larger than {MAX_REQUEST_BYTES} bytes"
            self.tail = bytes(buf[-2:])
            buf.clear()
        return out

    def whole(self, data: bytes) -> Request | None:
        """The request that data is when, with nothing buffered, it is exactly one complete
        request with LF line ends, every line an attribute (nearly every read from Postfix);
        else None: feed it (which frames, and refuses, what is not)."""
        size = len(data)
        if (size < 3 or size > MAX_REQUEST_BYTES or data[-1] != 10 or data[-2] != 10
                or self.skipping):
            return None
        # its skeleton (one pass in C): its first empty line ends it, no line lacks a `=`
        # (the first one included), no CR
        skeleton = data.translate(None, SKELETON_DELETES)
        if skeleton[0] == 10 or skeleton.find(b"\n\n") != len(skeleton) - 2 or 13 in skeleton:
            return None
        if size > SHORT_REQUEST_BYTES and (size > MAX_LINE_BYTES
                                           or skeleton.count(10) > MAX_ATTRIBUTES + 1):
            return Request(data, check_limits(data))  # what check_limits may refuse
        return Request(data)

    def _skip(self, data: bytes, out: list[Request]) -> bytes:
        joined = self.tail + data
        lf = joined.find(b"\n\n")
        crlf = joined.find(b"\n\r\n")
        ends = [e for e in (lf + 2 if lf >= 0 else -1, crlf + 3 if crlf >= 0 else -1) if e >= 0]
        if not ends:
            self.tail = joined[-2:]
            return b""
        end = min(ends)
        out.append(Request(b"", self.skipping))
        self.skipping = ""
        self.tail = b""
        return joined[end:]

    @property
    def complete(self) -> bool:
        """True when a whole request waits in the buffer."""
        return _request_end(self.buffer, 0) >= 0

    @property
    def pending(self) -> bool:
        """True when part of a request has been received."""
        return bool(self.buffer) or bool(self.skipping)


def format_action(action: str) -> bytes:
    return b"action=" + action.encode("utf-8", "replace") + b"\n\n"


def answer_complete(buf: bytes) -> int:
    """Length of the complete answer at the start of buf (through its empty line), or -1."""
    end = buf.find(b"\n\n") + 2
    if end < 3 or end != len(buf) or buf[0] == 10 or 13 in buf:
        return _request_end(buf, 0)  # not simply one whole answer with LF line ends
    return end


def answer_action(answer: bytes) -> bytes:
    """The first `action=` line of a complete answer, without line ending; b'' if none or empty."""
    if answer.startswith(b"action="):  # nearly always: no need to split the answer
        line = answer[:answer.find(b"\n")].rstrip(b"\r")
        return line if len(line) > 7 else b""
    for line in answer.split(b"\n"):
        if line.startswith(b"action="):
            line = line.rstrip(b"\r")
            return line if len(line) > 7 else b""
    return b""
