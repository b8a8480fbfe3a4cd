"""Debian's Chromium, headless, for the status page's tests; the page's tables read back from
HTML; a PNG's pixels counted by colour.

`chromium` runs as root with --no-sandbox, a private --user-data-dir in a temporary directory
(removed after), no background networking, and at most TIMEOUT seconds: its whole process group
is killed then (it forks a zygote, a renderer and a GPU process). `tables` parses HTML (the page
as served, or the DOM Chromium dumps) into each table's rows: the row's class and its cells'
text, unescaped. `pixels` decodes an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium's
--screenshot writes) and counts its pixels by colour.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from html.parser import HTMLParser

BINARY = "/usr/bin/chromium"
TIMEOUT = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with args (the URL last); its output as text."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    argv = [BINARY, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-dev-shm-usage", *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium {' '.join(args)}: no end within {TIMEOUT:g}s") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a helper it left behind
        except ProcessLookupError:
            pass
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def dump_dom(url: str) -> str:
    """The DOM of url once loaded, serialized."""
    done = chromium("--dump-dom", url)
    assert done.returncode == 0 and "<html" in done.stdout, (done.returncode, done.stderr[-2000:])
    return done.stdout


def screenshot(url: str, path: str, size: tuple[int, int] = (1000, 600)) -> bytes:
    """A PNG of url in a window of size; its bytes."""
    done = chromium("--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
                    f"--screenshot={path}", url)
    assert done.returncode == 0 and os.path.exists(path), (done.returncode, done.stderr[-2000:])
    with open(path, "rb") as f:
        return f.read()


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: dict[str, list[tuple[str, list[str]]]] = {}
        self.table = ""
        self.cells: list[str] | None = None
        self.text: list[str] | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        got = dict(attrs)
        if tag == "table":
            self.table = got.get("data-pool") or ""
            self.found[self.table] = []
        elif tag == "tr":
            self.cells = []
            self.found[self.table].append((got.get("class") or "", self.cells))
        elif tag in ("td", "th"):
            self.text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.text is not None and self.cells is not None:
            self.cells.append("".join(self.text))
            self.text = None

    def handle_data(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)


def tables(page: str) -> tuple[dict[str, list[tuple[str, list[str]]]], list[str]]:
    """Each table's rows by its data-pool attribute: (the row's class, its cells' text), the
    header row first; and every start tag seen, in order."""
    parser = _Tables()
    parser.feed(page)
    parser.close()
    return parser.found, parser.tags


def pixels(png: bytes) -> Counter:
    """The pixels of a PNG counted by colour ('#rrggbb')."""
    assert png[:8] == PNG_SIGNATURE, png[:16]
    pos, chunks, head = 8, [], b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            head = data
        elif kind == b"IDAT":
            chunks.append(data)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head)
    assert depth == 8 and colour in (2, 6) and not interlace, (depth, colour, interlace)
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * size
    counts: Counter = Counter()
    above = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), above, size)
        counts.update(line[x:x + 3].hex() for x in range(0, stride, size))
        above = line
    return Counter({f"#{k}": v for k, v in counts.items()})


def unfilter(kind: int, line: bytearray, above: bytearray, size: int) -> bytearray:
    """A PNG scanline with its filter (0-4) undone; above: the previous line, undone."""
    for x in range(len(line)):
        left = line[x - size] if x >= size else 0
        up = above[x]
        corner = above[x - size] if x >= size else 0
        if kind == 1:
            line[x] = (line[x] + left) & 0xFF
        elif kind == 2:
            line[x] = (line[x] + up) & 0xFF
        elif kind == 3:
            line[x] = (line[x] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            near = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[x] = (line[x] + near) & 0xFF
    return line
