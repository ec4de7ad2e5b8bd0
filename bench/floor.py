"""The cheapest forwarder Python can be, for the benchmark to measure beside Powerstrip.

A proxy's added latency on a small request is mostly the kernel's (two more wake-ups, two more
send/receive pairs) plus the proxy's own user time. This script is the least user time a Python
forwarder can spend: one ``epoll`` loop, no framework, one ``recv`` and one ``send`` per event.
With ``--http`` it also runs every byte through llhttp (httptools), one parser per direction,
which is the least HTTP work a proxy that must refuse malformed requests and follow responses
to their end can do. It forwards nothing else correctly (no half-close, no flow control, no
errors): it is a yardstick, not a proxy.

Usage: python bench/floor.py --upstream /path/docker.sock (--tcp PORT | --unix PATH)... [--http]
It prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys

import httptools


class _Ends:
    """httptools callback target: counts complete messages, the one Python callback per
    message that a proxy following its messages needs at least."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def _listener(spec: tuple[str, str]) -> socket.socket:
    kind, where = spec
    if kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(where)))
    else:
        if os.path.exists(where):
            os.unlink(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
    # As deep as the proxy's own queue, so that a burst of connections measures the same thing.
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve(upstream: str, listeners: list[socket.socket], http: bool) -> None:
    """Forward every connection on ``listeners`` to the unix socket ``upstream``, forever."""
    poller = select.epoll()
    accepting = {sock.fileno(): sock for sock in listeners}
    for fd in accepting:
        poller.register(fd, select.EPOLLIN)
    sockets: dict[int, socket.socket] = {}
    peers: dict[int, socket.socket] = {}
    parsers: dict[int, object] = {}
    while True:
        for fd, _event in poller.poll():
            listener = accepting.get(fd)
            if listener is not None:
                client, _ = listener.accept()
                client.setblocking(False)
                if client.family == socket.AF_INET:
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                daemon.connect(upstream)
                daemon.setblocking(False)
                for sock, peer in ((client, daemon), (daemon, client)):
                    sockets[sock.fileno()] = sock
                    peers[sock.fileno()] = peer
                    poller.register(sock.fileno(), select.EPOLLIN)
                if http:
                    parsers[client.fileno()] = httptools.HttpRequestParser(_Ends())
                    parsers[daemon.fileno()] = httptools.HttpResponseParser(_Ends())
                continue
            sock = sockets.get(fd)
            if sock is None:
                continue  # closed earlier in this batch, with its peer
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                for sock in (sockets.pop(fd), peers.pop(fd)):
                    if sock.fileno() >= 0:
                        poller.unregister(sock.fileno())
                        sockets.pop(sock.fileno(), None)
                        peers.pop(sock.fileno(), None)
                        parsers.pop(sock.fileno(), None)
                        sock.close()
                continue
            parser = parsers.get(fd)
            if parser is not None:
                parser.feed_data(data)
            peers[fd].send(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the daemon's unix socket path")
    parser.add_argument("--tcp", action="append", default=[], help="a loopback port to listen on")
    parser.add_argument("--unix", action="append", default=[], help="a socket path to listen on")
    parser.add_argument("--http", action="store_true", help="run every byte through llhttp")
    args = parser.parse_args()
    specs = [("tcp", port) for port in args.tcp] + [("unix", path) for path in args.unix]
    listeners = [_listener(spec) for spec in specs]
    print("ready", flush=True)
    serve(args.upstream, listeners, args.http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
