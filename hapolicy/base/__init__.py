"""The ground the other packages stand on: event loop, log, records, files, sockets, protocol."""
