"""Loggers for in-process tests: they keep what they are given instead of writing it
(`ListLogger`: `level: line` strings; `KeptLog`: (level, line) pairs, made printable as
`Logger.log` makes them)."""

from __future__ import annotations

from hapolicy.base.log import Logger, clean


class ListLogger(Logger):
    """A logger that keeps `level: line` strings instead of writing them."""

    def __init__(self) -> None:
        super().__init__(syslog_socket="")
        self.lines: list[str] = []

    def log(self, level: str, message: str) -> None:
        self.lines.append(f"{level}: {message}")


class KeptLog(Logger):
    """A logger that keeps (level, line) instead of writing them."""

    def __init__(self) -> None:
        super().__init__(syslog_socket="")
        self.lines: list[tuple[str, str]] = []

    def log(self, level: str, message: str) -> None:
        self.lines.append((level, clean(message)))  # as Logger.log does

    def text(self, level: str | None = None) -> str:
        return "\n".join(m for lvl, m in self.lines if level in (None, lvl))
