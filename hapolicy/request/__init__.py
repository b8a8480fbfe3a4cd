"""The way of one request: client connection, routing, the dispatcher and its jobs, selection, and
the hooks its builder (assembly) attaches: the lane, hedging, shadow copies."""
