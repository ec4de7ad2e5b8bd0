"""The proxy's HTTP client for adapter calls: its pool under concurrent hooked requests, and the
ways an answer may be framed or be too large.

A proxy holding N hooked requests at once holds N calls to an adapter at once. The connections
those calls opened must serve the next N calls: a pool that keeps fewer idle connections than
that opens fresh ones for nearly every call beyond its bound, wave after wave, each leaving a
TIME_WAIT behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.test_hooks import adapters_file, hooked_proxy  # noqa: F401 - a fixture
from tests.rawhttp import connect

CLIENTS = 20
WAVES = 3


class SlowCounting(ThreadingHTTPServer):
    """A null adapter that holds each call a moment, so that concurrent calls overlap, and
    counts the connections it accepts and the calls it answers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowEcho)
        self.connections = 0
        self.calls = 0
        self.lock = threading.Lock()


class _SlowEcho(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    server: SlowCounting

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """Echo the call after a pause (``/``), or answer in the framing the path names:
        ``/chunked``, ``/until-close`` (no length: the answer ends at the close), ``/huge``
        (a valid answer padded to 256 KiB)."""
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        document = {"PowerstripProtocolVersion": 1,
                    "ModifiedClientRequest": call["ClientRequest"]}
        if self.path == "/huge":
            document["Padding"] = "x" * 256 * 1024
        answer = json.dumps(document).encode()
        with self.server.lock:
            self.server.calls += 1
        if self.path == "/":
            time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(answer) // 2
            for piece in (answer[:half], answer[half:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            return
        if self.path == "/until-close":
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def slow_counting() -> Iterator[SlowCounting]:
    server = SlowCounting()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def read_head_and_body(sock: object) -> tuple[bytes, bytes]:
    """One response with a Content-Length, read whole: its head and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


@pytest.mark.timeout(90)
def test_concurrent_hook_calls_reuse_their_connections_wave_after_wave(
    hooked_proxy, slow_counting  # noqa: F811 - the fixture imported above
):
    port = slow_counting.server_address[1]
    proxy = hooked_proxy(adapters_file(
        {"GET /_ping": {"pre": ["slow"]}},
        {"slow": {"url": f"http://127.0.0.1:{port}/", "timeout": 30}},
    ))
    clients = [connect(proxy.host) for _ in range(CLIENTS)]
    try:
        for _ in range(WAVES):
            # Every request of a wave is out before any answer is read: CLIENTS calls at once.
            for sock in clients:
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in clients:
                assert read_head_and_body(sock)[0].startswith(b"HTTP/1.1 200"), "not answered"
    finally:
        for sock in clients:
            sock.close()
    assert slow_counting.calls == CLIENTS * WAVES
    # The first wave opens at most one connection per concurrent call; later waves reuse them.
    assert slow_counting.connections <= CLIENTS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/chunked", "/until-close"])
def test_an_answer_framed_otherwise_than_by_length_is_read_whole(
    hooked_proxy, slow_counting, path  # noqa: F811 - the fixture imported above
):
    port = slow_counting.server_address[1]
    proxy = hooked_proxy(adapters_file(
        {"GET /_ping": {"pre": ["framed"]}},
        {"framed": f"http://127.0.0.1:{port}{path}"},
    ))
    sock = connect(proxy.host)
    try:
        for _ in range(3):
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_head_and_body(sock)[0].startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
    assert slow_counting.calls == 3


@pytest.mark.timeout(60)
def test_an_answer_larger_than_the_limit_is_a_502_naming_the_adapter(
    hooked_proxy, slow_counting  # noqa: F811 - the fixture imported above
):
    port = slow_counting.server_address[1]
    # The limit is the call's size plus max_body plus 64 KiB: about 65 KiB here.
    proxy = hooked_proxy(adapters_file(
        {"GET /_ping": {"pre": ["huge"]}},
        {"huge": f"http://127.0.0.1:{port}/huge"},
        max_body="1KiB",
    ))
    sock = connect(proxy.host)
    try:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_head_and_body(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 502"), head
    message = json.loads(body)["message"]
    assert "adapter huge" in message and "larger than" in message, message
