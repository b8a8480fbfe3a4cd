"""The python floor: the least a CPython relay of the policy protocol can cost.

Contract: `python floor.py PORT BACKEND_HOST BACKEND_PORT PROCESSES` serves 127.0.0.1:PORT
with PROCESSES processes, each with its own SO_REUSEPORT listener and a raw `select.epoll`
loop. Each client gets one backend connection of its own, opened when it is accepted; bytes
are passed through whole requests and whole answers at a time (the end of each found with one
`find` of the empty line), in both directions. No health, no timeouts, no failover, no
logging: what hapolicy adds on top of this is the cost of its code, not of the language.
It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

END = b"\n\n"


def relay(data: bytes, buf: bytes, dest: socket.socket) -> bytes:
    """Send every complete message of buf+data to dest; return what is left over."""
    buf += data
    end = buf.rfind(END)
    if end < 0:
        return buf
    whole, rest = buf[:end + 2], buf[end + 2:]
    try:
        sent = dest.send(whole)
    except BlockingIOError:
        sent = 0
    if sent < len(whole):  # a full socket buffer: rare here, so the slow way
        dest.setblocking(True)
        dest.sendall(whole[sent:])
        dest.setblocking(False)
    return rest


def serve(port: int, backend: tuple[str, int]) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(1024)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    peer: dict[int, socket.socket] = {}  # fd -> the other end's socket
    own: dict[int, socket.socket] = {}  # fd -> its socket
    bufs: dict[int, bytes] = {}
    while True:
        for fd, _events in ep.poll():
            if fd == lfd:
                try:
                    client, _ = lsock.accept()
                except BlockingIOError:
                    continue
                try:
                    server = socket.create_connection(backend, timeout=10)
                except OSError:
                    client.close()
                    continue
                for sock in (client, server):
                    sock.setblocking(False)
                    own[sock.fileno()] = sock
                    bufs[sock.fileno()] = b""
                    ep.register(sock.fileno(), select.EPOLLIN)
                peer[client.fileno()], peer[server.fileno()] = server, client
                continue
            if fd not in own:
                continue  # closed with its peer earlier in this round
            try:
                data = own[fd].recv(65536)
                if data:
                    bufs[fd] = relay(data, bufs[fd], peer[fd])
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            other = peer.pop(fd)
            for sock in (own[fd], other):
                ep.unregister(sock.fileno())
                del own[sock.fileno()], bufs[sock.fileno()]
                peer.pop(sock.fileno(), None)
                sock.close()


def main(argv: list[str]) -> None:
    port, host, bport, processes = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve(port, (host, bport))
            finally:
                os._exit(1)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        children.remove(pid)


if __name__ == "__main__":
    main(sys.argv[1:])
