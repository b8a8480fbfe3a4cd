"""hapolicy.daemon.childproto in process: both ends of a child's socketpair, and the titles."""

from __future__ import annotations

import socket

from hapolicy.daemon.childproto import (
    MSG_READY,
    MSG_RETIRING,
    master_gone,
    receive,
    tell,
    worker_title,
)


def test_the_master_hears_a_child_then_the_end_of_file():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    with ours, theirs:
        assert receive(ours) is None  # nothing said yet
        tell(theirs, MSG_READY)
        tell(theirs, MSG_RETIRING)
        assert receive(ours) == MSG_READY + MSG_RETIRING
        theirs.close()
        assert receive(ours) == b""
        tell(theirs, MSG_READY)  # a closed end: lost, never raises


def test_a_child_sees_the_master_gone_only_at_the_end_of_file():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    with ours, theirs:
        assert not master_gone(theirs)
        ours.send(b"?")  # the master says nothing today; a byte is not the end
        assert not master_gone(theirs)
        ours.close()
        assert master_gone(theirs)


def test_worker_titles():
    assert worker_title(False, 3, 1) == "hapolicy: worker requests=3 clients=1"
    assert worker_title(True, 0, 2) == "hapolicy: worker (retiring) requests=0 clients=2"
