"""The client's end of input reaches the daemon even when the proxy's socket to the daemon is
full at that moment.

The client connection is the streaming producer of its daemon transport: past 64 KiB queued for
the daemon, Twisted pauses the client. When that buffer drains, Twisted resumes a paused producer
*instead of* carrying out a half-close asked for meanwhile, and does not look again, so the
daemon would never hear the client's end of input. That happens when the end of input is
already known as a big write to the daemon is made: a JSON body held for pre-hooks and let go
after the client half-closed, on a new daemon connection or on one kept alive from an earlier
request. A daemon that waits for the end of input (a hijacked stream's stdin ending) then waits
for ever; here the fake daemon answers only once it has read to the end of its input.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from powerstrip.testing import start_adapter, stop_process
from tests.faults.test_faults import (  # noqa: F401 - proxy_factory is a fixture
    FakeDaemon,
    proxy_factory,
    read_response,
)

pytestmark = pytest.mark.timeout(60)

NULL = Path(__file__).resolve().parents[2] / "adapters" / "null_adapter.py"
UPGRADED = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
ATTACH = (b"POST /v1.41/containers/x/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
          b"Host: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
          b"Content-Length: 0\r\n\r\n")
#: How long the daemon leaves the proxy's writes unread before it starts reading: long enough
#: for the proxy to queue more than its 64 KiB high-water mark and pause the client.
STALL = 0.5


class Seen:
    """What the fake daemon read on the connection that ended with the client's input."""

    def __init__(self) -> None:
        self.eof = threading.Event()
        self.read = 0


def read_slowly_to_eof(conn: socket.socket, seen: Seen, already: int) -> None:
    """Stall, then read in small pieces with pauses until the end of input; answer with the
    number of bytes read after the head, as ``wc -c`` would."""
    time.sleep(STALL)
    got = already
    reads = 0
    while chunk := conn.recv(16384):
        got += len(chunk)
        reads += 1
        if reads % 8 == 0:
            time.sleep(0.002)
    seen.read = got
    seen.eof.set()
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%d"
                     % (len(b"%d" % got), got))
    except OSError:
        pass  # the client gave up (the test failed): that is reported there


def wc_daemon(seen: Seen) -> Callable[[socket.socket], None]:
    """A daemon handler: a ping is answered at once (the connection kept alive); any other
    request is read to the end of input (see ``read_slowly_to_eof``)."""
    def handle(conn: socket.socket) -> None:
        with conn:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                if head.startswith(b"GET /_ping "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    continue
                rest = len(head) - head.index(b"\r\n\r\n") - 4
                if b"/attach?" in head.split(b"\r\n", 1)[0]:
                    conn.sendall(UPGRADED)
                read_slowly_to_eof(conn, seen, rest)
                return

    return handle


@pytest.fixture(scope="module")
def null_adapter() -> Iterator[str]:
    adapter = start_adapter([sys.executable, str(NULL), "--listen", "127.0.0.1:0"], "null")
    try:
        yield adapter.url
    finally:
        stop_process(adapter.proc)


def hooked_config(tmp_path: Path, url: str) -> Path:
    """An adapters file with the null adapter as the pre-hook of container create and attach."""
    config = tmp_path / "adapters.yml"
    config.write_text(
        "version: 1\n"
        "endpoints:\n"
        '  "POST /*/containers/create":\n'
        "    pre: [null_adapter]\n"
        '  "POST /*/containers/*/attach":\n'
        "    pre: [null_adapter]\n"
        "adapters:\n"
        f"  null_adapter: {url}\n")
    return config


def big_create_body(size: int) -> bytes:
    return json.dumps({"Image": "busybox", "Env": [f"FILLER={'x' * size}"]}).encode()


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new-daemon-connection",
                                                           "kept-alive-daemon-connection"])
def test_a_body_held_for_pre_hooks_is_followed_by_the_clients_end_of_input(
        proxy_factory, tmp_path, null_adapter, kept_alive):  # noqa: F811
    """A 1 MiB JSON body, sent whole with the client's half-close, is held for a pre-hook and
    let go after the end of input is known: the daemon reads all of it, then hears the end of
    input, and its answer reaches the client."""
    seen = Seen()
    daemon = FakeDaemon(tmp_path / "d.sock", wc_daemon(seen))
    proxy = proxy_factory(daemon.host, "--config", str(hooked_config(tmp_path, null_adapter)))
    body = big_create_body(1 << 20)
    with proxy.connect() as sock:
        if kept_alive:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"
        sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        sock.shutdown(socket.SHUT_WR)
        assert seen.eof.wait(15), "the daemon never heard the client's end of input"
        head, answer = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert answer == b"%d" % len(body) and seen.read == len(body)
    assert daemon.connections == 1


@pytest.mark.parametrize("hooked", [False, True], ids=["no-hooks", "pre-hook"])
def test_a_hijacked_streams_stdin_ends_behind_a_slow_daemon(
        proxy_factory, tmp_path, null_adapter, hooked):  # noqa: F811
    """1 MiB of stdin and the client's half-close on an attach, against a daemon slow to read:
    the daemon reads all of it and then the end of stdin, and its answer comes back.

    On a plain socket the proxy reads the client's end of input only once the daemon's buffer
    has drained and resumed the client, so this path held before; it is kept alongside the
    held bodies as the other way the end of input reaches a slow daemon."""
    seen = Seen()
    daemon = FakeDaemon(tmp_path / "d.sock", wc_daemon(seen))
    extra = ("--config", str(hooked_config(tmp_path, null_adapter))) if hooked else ()
    proxy = proxy_factory(daemon.host, *extra)
    stdin = b"".join(b"%d\n" % i for i in range(150_000))
    with proxy.connect() as sock:
        sock.sendall(ATTACH)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the upgrade"
            received += chunk
        assert received.startswith(b"HTTP/1.1 101 "), received
        rest = received[received.index(b"\r\n\r\n") + 4:]
        sock.sendall(stdin)
        sock.shutdown(socket.SHUT_WR)
        assert seen.eof.wait(15), "the daemon never heard the end of stdin"
        while chunk := sock.recv(65536):
            rest += chunk
    assert seen.read == len(stdin)
    assert rest.endswith(b"\r\n\r\n%d" % len(stdin))
