"""The way of one request: client connection, routing, dispatch, selection, the lane, hedging, shadow copies."""
