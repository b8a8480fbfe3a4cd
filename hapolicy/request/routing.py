"""Which pool answers the requests of one listen address.

An address that one pool listens on hands its requests straight to that pool's dispatcher:
nothing is looked up per request. Pools that share an address each name the `policy_context`
they serve (Postfix 3.1 and later send `policy_context=VALUE` when main.cf says
`check_policy_service { inet:..., policy_context=VALUE }`): a `ContextRouter` hands a request
to the pool of its context, one without a known context to the pool of context `*`, or else
answers it with the default action of the address's first pool, with a warning (at most one
line a second, with the count of the others).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.base.log import Logger
    from hapolicy.base.protocol import Request
    from hapolicy.config.records import PoolConfig
    from hapolicy.request.dispatch import Dispatcher
    from hapolicy.request.job import Client

WARN_SECONDS = 1.0


def target(pools: list[PoolConfig], dispatchers: dict[str, Dispatcher],
           log: Logger) -> Dispatcher | ContextRouter:
    """What takes the requests of an address its pools listen on."""
    if len(pools) == 1 and not pools[0].policy_context:
        return dispatchers[pools[0].name]
    return ContextRouter([(p.policy_context, dispatchers[p.name]) for p in pools], log)


class ContextRouter:
    """Hands each request to the dispatcher of its policy_context."""

    lane = None  # the pool is known once a request is read (lane.py)

    def __init__(self, pools: list[tuple[str, Dispatcher]], log: Logger) -> None:
        self.by_context = {context.encode(): d for context, d in pools if context != "*"}
        self.fallback = next((d for context, d in pools if context == "*"), None)
        self.first = pools[0][1]
        self.log = log
        self.quiet_until = 0.0
        self.held = 0

    def submit(self, request: Request, client: Client) -> None:
        context = request.attr_bytes(b"policy_context")
        dispatcher = self.by_context.get(context, self.fallback)
        if dispatcher is None:
            self._warn(context)
            self.first.count()
            client.deliver(self.first.default_answer)
            return
        if client.route is not dispatcher:  # an instance is sticky to a service of one pool
            client.route = dispatcher
            client.instance = b""
        dispatcher.submit(request, client)

    def _warn(self, context: bytes) -> None:
        now = time.monotonic()
        if now < self.quiet_until:
            self.held += 1
            return
        more = f" ({self.held} more since the last warning)" if self.held else ""
        shown = context.decode("utf-8", "replace")[:64] if context else "(none)"
        self.log.warning(f"request of policy_context {shown} that no pool serves: answering "
                         f"pool {self.first.config.name}'s action="
                         f"{self.first.config.default_action}{more}")
        self.quiet_until = now + WARN_SECONDS
        self.held = 0
