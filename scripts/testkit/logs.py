"""A logger for in-process tests: it keeps `level: line` strings instead of writing them."""

from __future__ import annotations

from hapolicy.base.log import Logger


class ListLogger(Logger):
    def __init__(self) -> None:
        super().__init__(syslog_socket="")
        self.lines: list[str] = []

    def log(self, level: str, message: str) -> None:
        self.lines.append(f"{level}: {message}")
