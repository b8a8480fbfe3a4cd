"""The way of one request: client, routing, dispatch, jobs, selection, lane, hedge, shadow."""
