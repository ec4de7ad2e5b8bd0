"""The daemon connection ends when the proxy closes it, even while the daemon's socket is full.

The client connection is the streaming producer of its daemon transport: past 64 KiB queued for
the daemon, Twisted pauses the client. When that buffer drains, Twisted resumes a paused producer
*instead of* carrying out a ``loseConnection()`` asked for meanwhile, and does not look again (it
has stopped reading, so not even the daemon's own close is seen). A daemon that reads slowly
and then waits (an attach whose container does not read its stdin, an answer given before the
body was read) would keep its connection, and the proxy a descriptor, for ever once the client
connection closed: by the client going away, or by the proxy (an idle timeout, a refusal). So
would a daemon that ends its side and then reads until the proxy closes (a lingering close),
and the client would wait for ever for the end of an answer delimited by it.

The fake daemon here stops reading after the request head, answers, and, once told that the
proxy has closed its side, reads what was queued for it and watches for the end of its
connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.faults.test_daemon_half_close import (  # noqa: F401 - null_adapter is a fixture
    ATTACH,
    UPGRADED,
    big_create_body,
    hooked_config,
    null_adapter,
)
from tests.faults.test_faults import (  # noqa: F401 - proxy_factory is a fixture
    FakeDaemon,
    Proxy,
    proxy_factory,
    read_response,
)

pytestmark = pytest.mark.timeout(60)

#: How long the daemon waits, once it has read all that was queued for it, for its connection
#: to end: far beyond the moment a flushed close arrives.
END_WAIT = 10.0


class Watch:
    """What the fake daemon saw of its connection's end."""

    def __init__(self) -> None:
        #: Set by the test: the proxy has let the client go; the daemon may read again.
        self.look = threading.Event()
        self.done = threading.Event()
        self.ended: bool | None = None
        self.read = 0


def stall_then_watch(watch: Watch, answer: bytes, output: bytes = b""
                     ) -> Callable[[socket.socket], None]:
    """A daemon handler: read the request head, send ``answer``, then read nothing until
    ``watch.look``, sending ``output`` every 50 ms meanwhile if given (a container's stdout);
    then read what was queued and record whether the connection ended."""
    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            watch.read = len(head)
            conn.sendall(answer)
            conn.settimeout(1)
            sending = bool(output)
            while not watch.look.wait(0.05):
                if sending:
                    try:
                        conn.sendall(output)
                    except OSError:
                        sending = False  # the proxy stopped reading or closed: it is seen below
            conn.settimeout(END_WAIT)
            try:
                while chunk := conn.recv(65536):
                    watch.read += len(chunk)
                watch.ended = True
            except ConnectionResetError:
                watch.ended = True
            except TimeoutError:
                watch.ended = False
            watch.done.set()

    return handle


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def send_until_stalled(sock: socket.socket, block: bytes) -> int:
    """Send ``block`` over and over until the proxy has stopped reading for a second: the
    daemon reads nothing, so the proxy's queue for it is full and the client paused."""
    sock.setblocking(False)
    sent = 0
    stalled_since = None
    while True:
        try:
            sent += sock.send(block)
            stalled_since = None
        except BlockingIOError:
            now = time.monotonic()
            if stalled_since is None:
                stalled_since = now
            elif now - stalled_since >= 1.0:
                break
            time.sleep(0.02)
    sock.setblocking(True)
    return sent


def assert_the_daemon_connection_ended(proxy: Proxy, watch: Watch, fds: int) -> None:
    watch.look.set()
    assert watch.done.wait(END_WAIT + 10), "the daemon never got to look"
    assert watch.ended, (f"the proxy left its daemon connection open after the client's ended "
                         f"({watch.read} bytes read)")
    assert wait_for(lambda: proxy.fd_count() <= fds, 5), (
        f"the proxy holds {proxy.fd_count()} descriptors, not {fds}")


def test_a_client_that_goes_away_behind_a_daemon_not_reading_stdin(
        proxy_factory, tmp_path):  # noqa: F811
    """An attach whose daemon sends output but never reads stdin: the client sends stdin until
    it is held back, then resets its connection. The proxy sees that on its next write of the
    output and closes the daemon connection, which ends once what was queued for it has gone."""
    watch = Watch()
    output = struct.pack(">BxxxL", 1, 4) + b"out\n"
    daemon = FakeDaemon(tmp_path / "d.sock", stall_then_watch(watch, UPGRADED, output))
    proxy = proxy_factory(daemon.host)
    baseline = proxy.fd_count()
    sock = proxy.connect()
    try:
        sock.sendall(ATTACH)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the upgrade"
            received += chunk
        assert received.startswith(b"HTTP/1.1 101 "), received
        send_until_stalled(sock, b"x" * 65536)
        assert proxy.fd_count() == baseline + 2  # the client's connection and the daemon's
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()  # a reset: what it was sent is unread
    assert wait_for(lambda: proxy.fd_count() <= baseline + 1, 10), "the client was never let go"
    assert_the_daemon_connection_ended(proxy, watch, baseline)


def test_an_idle_timeout_after_an_answer_given_before_its_body_was_read(
        proxy_factory, tmp_path, null_adapter):  # noqa: F811
    """A 1 MiB JSON body held for a pre-hook goes to the daemon in one write, which fills its
    queue; the daemon answers at once without reading it. The client, answered, sends nothing
    more and its connection is closed at the idle timeout; the daemon connection with it."""
    watch = Watch()
    answer = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
              b"Content-Length: 2\r\n\r\n{}")
    daemon = FakeDaemon(tmp_path / "d.sock", stall_then_watch(watch, answer))
    proxy = proxy_factory(daemon.host, "--idle-timeout", "1",
                          "--config", str(hooked_config(tmp_path, null_adapter)))
    body = big_create_body(1 << 20)
    with proxy.connect() as sock:
        sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        head, answered = read_response(sock)
        assert head.startswith(b"HTTP/1.1 201 ") and answered == b"{}"
        # The client's connection, the daemon's, and those kept to the adapter.
        during = proxy.fd_count()
        assert sock.recv(1) == b"", "the idle connection was not closed"
    assert wait_for(lambda: proxy.fd_count() <= during - 1, 10), "the client was never let go"
    assert_the_daemon_connection_ended(proxy, watch, during - 2)


def test_a_daemon_that_lingers_after_its_answer_ended_by_its_close(
        proxy_factory, tmp_path, null_adapter):  # noqa: F811
    """A 1 MiB JSON body let go by a pre-hook fills the daemon's queue; the daemon answers at
    once with an answer that ends with its connection, ends its output, and then, as a
    lingering close does (nginx's, say), reads what it is sent until the proxy closes. The
    proxy closes once that has gone, and the client gets the whole answer and its end."""
    watch = Watch()
    answer = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\n\r\n{\"message\":\"no\"}")

    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            watch.read = len(head)
            conn.sendall(answer)
            conn.shutdown(socket.SHUT_WR)
            watch.look.wait(END_WAIT)
            conn.settimeout(END_WAIT)
            try:
                while chunk := conn.recv(65536):
                    watch.read += len(chunk)
                watch.ended = True
            except ConnectionResetError:
                watch.ended = True
            except TimeoutError:
                watch.ended = False
            watch.done.set()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host, "--config", str(hooked_config(tmp_path, null_adapter)))
    body = big_create_body(1 << 20)
    with proxy.connect() as sock:
        sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        received = b""
        while b"no\"}" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the answer"
            received += chunk
        # Client, daemon and adapter connections, less the client's and daemon's at the end.
        fds = proxy.fd_count() - 2
        watch.look.set()
        assert watch.done.wait(END_WAIT + 10), "the daemon never got to look"
        assert watch.ended, (f"the proxy left its daemon connection open after the daemon's "
                             f"end ({watch.read} bytes read)")
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ") and received.endswith(b"{\"message\":\"no\"}")
    assert wait_for(lambda: proxy.fd_count() <= fds, 5), (
        f"the proxy holds {proxy.fd_count()} descriptors, not {fds}")
