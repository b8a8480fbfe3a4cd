"""A pool's dispatcher with what its settings ask for attached: the one way to build one.

`make_dispatcher` makes the `Dispatcher` (dispatch.py) of one pool in one process and attaches
the hooks of the request path from above, so that dispatch.py imports none of them: the lane
(lane.py) when the pool `qualifies` for it, a `Hedger` (hedge.py) when the pool hedges, and a
`Cache` (cache.py) on the pool's verdict table when it caches.
The mirrors of pools with a shadow are attached by `shadow.make_mirrors`, which makes the
shadow pools' mirror dispatchers here. A daemon worker (daemon/worker.py) and spawn mode
(spawn/mode.py) build their dispatchers so, and so do the tests and the benchmark.
"""

from __future__ import annotations

from hapolicy.request.dispatch import Dispatcher
from hapolicy.request.lane import Lane, qualifies

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hapolicy.base.eventloop import EventLoop
    from hapolicy.base.log import Logger
    from hapolicy.config.records import PoolConfig
    from hapolicy.tables.health import HealthTable


def make_dispatcher(loop: EventLoop, config: PoolConfig, table: HealthTable, log: Logger,
                    blames_deadline: bool = True, log_requests: bool = False,
                    verbose: bool = False, lane: bool = True,
                    load_slot: int = -1) -> Dispatcher:
    """The dispatcher of pool config, its lane and hedger attached as its settings ask;
    log_requests and verbose: the process's (DaemonConfig's) logging settings; lane=False
    leaves the lane off (the tests and the bench compare the two ways); load_slot: the
    worker's slot, in which it counts its requests to each service (load.py; -1: none)."""
    dispatcher = Dispatcher(loop, config, table, log, blames_deadline, log_requests, verbose,
                            load_slot)
    if config.hedge:
        from hapolicy.request.hedge import Hedger  # here: only a pool that hedges pays for it

        dispatcher.attach_hedger(Hedger(dispatcher))
    if config.cache:
        from hapolicy.request.cache import attach_cache  # here: only a pool that caches pays

        attach_cache(dispatcher, table.verdicts)
    if lane and qualifies(dispatcher):
        dispatcher.attach_lane(Lane(dispatcher))
    return dispatcher
