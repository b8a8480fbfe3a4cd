"""The in-process request tests' shared fixture: `runs` makes dispatchers (testkit.dispatching's
Run) and closes each at the test's end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from testkit.dispatching import Run


@pytest.fixture
def runs() -> Iterator[Callable[..., Run]]:
    made: list[Run] = []

    def make(*specs: str, **settings) -> Run:
        made.append(Run(*specs, **settings))
        return made[-1]

    yield make
    for run in made:
        run.close()
