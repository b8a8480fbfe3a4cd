"""The ground every other package stands on: the event loop, logging, records, safe files, unix
sockets, the policy protocol, an exchange's outcome."""
