"""How one exchange with a service ended: a small fixed set of categories, as HAProxy's checks.

Every exchange (backend.Connection.run) ends with one category and a detail text for the logs.
Health, logging and the active checks read the category, never the text:

- ANSWERED: a complete answer with an `action=` line.
- CONNECT_FAILED: refused, unreachable, no such unix socket, a name that does not resolve.
- RESET: the connection was reset (or the pipe broke) before a full answer.
- CONNECT_TIMEOUT, ANSWER_TIMEOUT: the connect, or the answer, did not come in time.
- CLOSED: the service closed the connection before a full answer.
- INVALID: an answer without `action=`, or larger than the limit.
- FAIL_ANSWER: an answer whose action matches fail-answer (a service that answers, but
  whose database is gone): the next service is asked.
- LOCAL: our own failure (no file descriptor left): not the service's fault, not counted.
- ABANDONED: the service was marked down while this exchange waited on it, so the request
  moved on; the failure that marked it down was counted, this one is not.

A timeout cost a request real time, so the pause after it doubles with each consecutive one
(so does a fail-answer: a broken database rarely mends within seconds);
every other failure is cheap to try again (a refused connect costs a millisecond), so the
pause after it stays the base cool-down and a restarted service is found soon.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

ANSWERED = 0
CONNECT_FAILED = 1
RESET = 2
CONNECT_TIMEOUT = 3
ANSWER_TIMEOUT = 4
CLOSED = 5
INVALID = 6
LOCAL = 7
ABANDONED = 8
FAIL_ANSWER = 9

NAMES = ("answered", "connect failed", "reset", "connect timeout", "answer timeout",
         "closed early", "invalid answer", "local failure", "abandoned", "fail answer")


class FailAnswer:
    """fail-answer's test: `judge` turns ANSWERED into FAIL_ANSWER when the action matches the
    pattern (a case-insensitive search of the text after `action=`)."""

    __slots__ = ("search",)

    def __init__(self, pattern: str) -> None:
        self.search = compile_fail_answer(pattern).search

    def judge(self, action: bytes, outcome: int, reason: str) -> tuple[int, str]:
        if outcome == ANSWERED and self.search(action[7:]):
            return FAIL_ANSWER, "answer matched fail-answer: " + action[7:].decode("utf-8",
                                                                                  "replace")
        return outcome, reason


def compile_fail_answer(pattern: str) -> re.Pattern[bytes]:
    """fail-answer's pattern as FailAnswer searches with it: bytes, case-insensitive. The
    config check compiles it the same way (a pattern can be a valid str one and not a bytes
    one: `\\N{...}`); it raises re.error, OverflowError or RecursionError for a bad one."""
    import re  # here: spawn mode's start pays for it only when the option is given

    return re.compile(pattern.encode(), re.IGNORECASE)


def fail_answer(pattern: str) -> FailAnswer | None:
    """The test of --fail-answer PATTERN, or None without one."""
    return FailAnswer(pattern) if pattern else None


def counts_against_service(outcome: int) -> bool:
    """Whether this outcome is the service's failure (health is told)."""
    return outcome not in (ANSWERED, LOCAL, ABANDONED)


def is_timeout(outcome: int) -> bool:
    return outcome == CONNECT_TIMEOUT or outcome == ANSWER_TIMEOUT


def doubles_pause(outcome: int) -> bool:
    """Whether the cool-down after this failure doubles at each consecutive one."""
    return outcome == CONNECT_TIMEOUT or outcome == ANSWER_TIMEOUT or outcome == FAIL_ANSWER
