"""A worker's max-use over all its pools: it retires once its dispatchers took max-use requests
in all.

Each dispatcher is given a share of the requests left (`Dispatcher.call_at_request`): the first
to take its share calls `step`, which retires the worker when the total is reached or shares out
what is left again. So the total is never passed unseen, and a pool costs nothing per request but
its own count.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from hapolicy.request.dispatch import Dispatcher


class MaxUse:
    """The max-use of one worker, shared among its dispatchers; `reached` when it is used up."""

    def __init__(self, max_use: int, dispatchers: list[Dispatcher],
                 reached: Callable[[], None]) -> None:
        self.max_use = max_use
        self.dispatchers = dispatchers
        self.reached = reached

    def share(self) -> None:
        """Give each dispatcher its share of the requests left."""
        served = sum(d.requests for d in self.dispatchers)
        share = max(1, (self.max_use - served) // len(self.dispatchers))
        for dispatcher in self.dispatchers:
            dispatcher.call_at_request(dispatcher.requests + share, self.step)

    def step(self) -> None:
        if sum(d.requests for d in self.dispatchers) >= self.max_use:
            self.reached()
        else:
            self.share()
