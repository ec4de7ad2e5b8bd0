"""The burst workload: many connections opened at once, each asking for a response head.

``burst(targets, connections, rounds)`` opens ``connections`` sockets to each target at the same
moment (non-blocking connects from one thread), sends ``GET /v1.41/events`` on each as soon as
it is connected, and times how long it takes until every connection has its response head.
``/events`` is a stream: the daemon sends its head at once and then keeps the connection open,
so all ``connections`` requests are outstanding together, as a burst of ``docker events`` or
``docker logs -f`` clients holds them. A proxy whose listen queue is shorter than the burst
leaves the rest to the client's SYN retransmits (one second, then three), which is what this
measures; a proxy that calls an adapter for each request also shows how its adapter calls cope
with that many at once.

Also usable alone: ``python bench/burst.py --docker-host tcp://127.0.0.1:PORT [-n 300]``.
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import statistics
import time
from collections.abc import Sequence
from typing import Protocol

REQUEST = b"GET /v1.41/events HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n"

#: A burst that has not had every head after this long is reported as failed, not waited for.
DEADLINE = 30.0


class Target(Protocol):
    """What ``burst`` needs of a target (``bench.Target`` is one)."""

    name: str
    docker_host: str


def _open(docker_host: str) -> tuple[socket.socket, bool]:
    """A socket connecting to ``docker_host``, and whether its connect is still under way."""
    if docker_host.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A unix connect either queues at once or (queue full) fails with EAGAIN when
        # non-blocking; blocking, it waits for room, which is what a client does.
        sock.connect(docker_host[len("unix://"):])
        sock.setblocking(False)
        return sock, False
    host, port = docker_host[len("tcp://"):].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex((host, int(port)))
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, f"connect to {docker_host}: {errno.errorcode.get(code, code)}")
    return sock, code != 0


def one_burst(docker_host: str, connections: int) -> list[float]:
    """Seconds from the burst's start until each connection's response head arrived (sorted).
    Raises RuntimeError when a head is not a 200 or the burst outlasts ``DEADLINE``."""
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytearray] = {}
    heads: list[float] = []
    started = time.perf_counter()
    try:
        for _ in range(connections):
            sock, pending = _open(docker_host)
            buffers[sock] = bytearray()
            if pending:
                selector.register(sock, selectors.EVENT_WRITE)
            else:
                sock.send(REQUEST)
                selector.register(sock, selectors.EVENT_READ)
        while len(heads) < connections:
            if time.perf_counter() - started > DEADLINE:
                raise RuntimeError(f"{connections - len(heads)} of {connections} heads not "
                                   f"received within {DEADLINE:g} s")
            for key, events in selector.select(1.0):
                sock = key.fileobj
                if events & selectors.EVENT_WRITE:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise RuntimeError(f"connect failed: {errno.errorcode.get(code, code)}")
                    sock.send(REQUEST)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("connection closed before its response head")
                buffer = buffers[sock]
                buffer += data
                if b"\r\n\r\n" in buffer:
                    heads.append(time.perf_counter() - started)
                    if not buffer.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"not a 200: {bytes(buffer[:200])!r}")
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in buffers:
            sock.close()
    return sorted(heads)


def burst(targets: Sequence[Target], connections: int = 300, rounds: int = 5,
          settle: float = 0.3) -> dict[str, dict[str, float]]:
    """Per target, the median over ``rounds`` bursts (targets taking turns) of the time until
    the last head (``last``) and until half of them (``median``). Between bursts the closed
    streams are given ``settle`` seconds to be torn down on every side."""
    samples: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            try:
                samples[target.name].append(one_burst(target.docker_host, connections))
            except (RuntimeError, OSError) as exc:
                raise RuntimeError(f"burst via {target.name}: {exc}") from None
            time.sleep(settle)
    return {
        name: {"last": statistics.median(s[-1] for s in runs),
               "median": statistics.median(statistics.median(s) for s in runs),
               "worst": max(s[-1] for s in runs)}
        for name, runs in samples.items()
    }


def _complete(buffer: bytearray) -> int:
    """The length of the first whole response (with a Content-Length) in ``buffer``, or 0."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buffer[:end]).lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    return end + 4 + length if len(buffer) >= end + 4 + length else 0


def concurrent_requests(docker_host: str, clients: int, per_client: int,
                        request: bytes) -> float:
    """Seconds for ``clients`` keep-alive connections, all open at once, to send ``request``
    ``per_client`` times each, every one as soon as the answer to the one before has arrived
    (responses must carry a Content-Length)."""
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(clients):
        sock, pending = _open(docker_host)
        socks.append(sock)
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if pending:
            selector.register(sock, selectors.EVENT_WRITE)
    # Every connect is done before the clock starts: the burst workload measures connecting,
    # this one the requests.
    while selector.get_map():
        for key, _ in selector.select(DEADLINE):
            selector.unregister(key.fileobj)
    left = {sock: per_client for sock in socks}
    buffers = {sock: bytearray() for sock in socks}
    started = time.perf_counter()
    try:
        for sock in socks:
            sock.send(request)
            selector.register(sock, selectors.EVENT_READ)
        running = clients
        while running:
            if time.perf_counter() - started > DEADLINE * 4:
                raise RuntimeError(f"{running} of {clients} clients not done in time")
            for key, _ in selector.select(1.0):
                sock = key.fileobj
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("connection closed mid-run")
                buffer = buffers[sock]
                buffer += data
                while (size := _complete(buffer)):
                    if not buffer.startswith(b"HTTP/1.1 2"):
                        raise RuntimeError(f"not a 2xx: {bytes(buffer[:200])!r}")
                    del buffer[:size]
                    left[sock] -= 1
                    if left[sock]:
                        sock.send(request)
                    else:
                        selector.unregister(sock)
                        running -= 1
        return time.perf_counter() - started
    finally:
        selector.close()
        for sock in socks:
            sock.close()


def main() -> None:
    """Measure one address alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-host", required=True, help="unix:///path or tcp://HOST:PORT")
    parser.add_argument("-n", "--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    class One:
        name = "target"
        docker_host = args.docker_host

    result = burst([One()], args.connections, args.rounds)["target"]
    print(f"{args.connections} connections: last head {result['last'] * 1000:.1f} ms "
          f"(worst {result['worst'] * 1000:.1f} ms), half of them by "
          f"{result['median'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
