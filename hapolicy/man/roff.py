"""Roff for the man pages (man(7) macros): plain text and `code` spans made safe, and the
few blocks the pages are made of (sections, paragraphs, tagged items, examples, tables).

Plain text has its backslashes, minus signs and characters other than ASCII escaped, and no
line of it starts with a dot or an apostrophe (a request). A page's date comes from
SOURCE_DATE_EPOCH, so that a build is reproducible.
"""

from __future__ import annotations

import os
import time

from hapolicy import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


def escape(text: str) -> str:
    """Plain text as roff: backslashes, minus signs and other than ASCII escaped."""
    out = []
    for char in text.replace("\\", "\\e").replace("-", "\\-"):
        out.append(char if ord(char) < 128 else f"\\[u{ord(char):04X}]")
    return "".join(out)


def inline(text: str) -> str:
    """Text with `code` spans (the option table's help) as roff: code in bold."""
    parts = text.split("`")
    return "".join(f"\\fB{escape(part)}\\fR" if i % 2 else escape(part)
                   for i, part in enumerate(parts))


def lines(*texts: str) -> str:
    """Roff text lines: none may start with a dot or an apostrophe (a request)."""
    out = []
    for text in texts:
        for line in text.split("\n"):
            out.append("\\&" + line if line[:1] in (".", "'") else line)
    return "\n".join(out) + "\n"


def example(text: str) -> str:
    """A block of literal lines, indented."""
    return ".PP\n.RS 4\n.nf\n" + lines(escape(text.rstrip("\n"))) + ".fi\n.RE\n"


def section(title: str) -> str:
    return f".SH {title}\n"


def para(text: str) -> str:
    return ".PP\n" + lines(inline(text))


def item(tag: str, text: str) -> str:
    """A tagged paragraph: tag (roff already) and its text, as a sentence."""
    text = text[:1].upper() + text[1:]
    return ".TP\n" + lines(tag) + lines(inline(text if text.endswith(".") else text + "."))


def header(name: str, number: str, summary: str) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch.isdigit() else ""
    return (f'.TH {name.upper()} {number} "{date}" "hapolicy {__version__}" '
            f'"{"File Formats" if number == "5" else "System Manager" + chr(39) + "s Manual"}"\n'
            + section("NAME") + lines(f"{escape(name)} \\- {escape(summary)}"))


def table(rows: Iterable[tuple[str, str]], bold: bool = True) -> str:
    font = "B" if bold else "R"
    return "".join(item(f"\\f{font}{escape(key)}\\fR", text) for key, text in rows)
