"""How TLS connections through the proxy end, through a TLS listener or to an ``ssl:`` daemon.

A TLS client's end of input (its close_notify) on a hijacked stream, against a daemon that reads
slowly: piped stdin (``seq 100000 | docker run -i ... wc -l``). The close_notify often arrives in
the same read as the last of the stdin, while the proxy is holding the client back because the
daemon's socket is full. It must still reach the daemon as the end of stdin once the daemon has
read the rest, and the daemon's answer must come back.

And a client the proxy refuses: its connection must end when the client ends its side. And TLS
towards the daemon (an ``ssl:`` upstream): the client's half-close reaches the daemon as a
close_notify, after which the daemon still answers.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from OpenSSL import SSL

from tests.faults.test_faults import (  # noqa: F401 - proxy_factory is a fixture
    FakeDaemon,
    _wait,
    answer_pings,
    proxy_factory,
)
from tests.tlscerts import make_certs, ssl_listen

pytestmark = pytest.mark.timeout(120)

UPGRADED = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
ATTACH = (b"POST /v1.41/containers/x/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
          b"Host: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
          b"Content-Length: 0\r\n\r\n")


def slow_wc(eofs: list[int]) -> object:
    """A daemon handler: answers the attach with 101, then reads stdin in small pieces with
    pauses (a busy daemon, a container slow to read) until the half-close, and answers with
    the number of bytes it read, as ``wc -c`` would."""
    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(UPGRADED)
            got = len(head) - head.index(b"\r\n\r\n") - 4
            reads = 0
            while chunk := conn.recv(16384):
                got += len(chunk)
                reads += 1
                if reads % 8 == 0:
                    time.sleep(0.002)
            eofs.append(got)
            conn.sendall(b"%d\n" % got)

    return handle


def tls_client(port: int, certs: Path) -> SSL.Connection:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(certs / "ca.pem"))
    context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    conn = SSL.Connection(context, socket.create_connection(("127.0.0.1", port)))
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def attach_and_pipe(port: int, certs: Path, stdin: bytes) -> bytes:
    """Attach over TLS, send ``stdin`` and a close_notify, and read until the proxy's own
    close_notify: what the daemon answered after the 101."""
    conn = tls_client(port, certs)
    conn.sendall(ATTACH)
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(65536)
    assert received.startswith(b"HTTP/1.1 101 "), received
    rest = received[received.index(b"\r\n\r\n") + 4:]
    conn.sendall(stdin)
    conn.shutdown()  # close_notify: the end of stdin, the output still to be read
    while True:
        try:
            rest += conn.recv(65536)
        except SSL.ZeroReturnError:
            break
    conn.sock_shutdown(socket.SHUT_RDWR)
    conn.close()  # the socket beneath
    return rest


@pytest.mark.parametrize("size", [600_000, 2_000_000])
def test_piped_stdin_ends_with_close_notify_behind_a_slow_daemon(proxy_factory, tmp_path,  # noqa: F811
                                                                   size):
    """20 rounds of two clients at once; before the fix, a round or two in hung."""
    certs = make_certs(tmp_path)
    eofs: list[int] = []
    daemon = FakeDaemon(tmp_path / "d.sock", slow_wc(eofs))
    proxy = proxy_factory(daemon.host, listen=ssl_listen(certs))
    port = int(proxy.host.split(" ", 1)[0].rsplit(":", 1)[1])
    stdin = b"".join(b"%d\n" % i for i in range(size // 6))

    def client(results: list[bytes]) -> None:
        results.append(attach_and_pipe(port, certs, stdin))

    for attempt in range(20):
        results: list[bytes] = []
        clients = [threading.Thread(target=client, args=(results,), daemon=True)
                   for _ in range(2)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(20)
        assert not any(thread.is_alive() for thread in clients), (
            f"round {attempt}: hung; the daemon saw the end of stdin {len(eofs)} times for "
            f"{2 * (attempt + 1)} clients")
        assert results == [b"%d\n" % len(stdin)] * 2


def test_a_refused_tls_client_is_let_go(proxy_factory, tmp_path):  # noqa: F811
    """A malformed request over TLS gets its 400 and a close_notify; once the client answers
    with its own and hangs up, the proxy's end of the connection closes too (it stayed open,
    paused and unread, until the proxy stopped)."""
    certs = make_certs(tmp_path)
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = proxy_factory(daemon.host, listen=ssl_listen(certs))
    port = int(proxy.host.split(" ", 1)[0].rsplit(":", 1)[1])
    before = proxy.fd_count()
    for _ in range(5):
        conn = tls_client(port, certs)
        conn.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        answer = b""
        while True:
            try:
                answer += conn.recv(65536)
            except SSL.ZeroReturnError:
                break
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        conn.shutdown()
        conn.close()
    assert _wait(lambda: proxy.fd_count() <= before, 10), (
        f"{proxy.fd_count() - before} refused connections still open")


class TLSDaemon:
    """A TLS server on 127.0.0.1 whose every connection runs ``handler(conn)`` in a thread,
    with the certificate ``make_certs`` wrote; what went wrong in a handler is in ``errors``."""

    def __init__(self, certs: Path, handler: object) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate_file(str(certs / "server-cert.pem"))
        self.context.use_privatekey_file(str(certs / "server-key.pem"))
        self.handler = handler
        self.errors: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def upstream(self, certs: Path) -> str:
        """The ``--upstream`` that reaches this daemon, verifying its certificate."""
        authorities = certs / "authorities"
        authorities.mkdir(exist_ok=True)
        shutil.copy(certs / "ca.pem", authorities / "ca.pem")
        return (f"ssl:host=127.0.0.1:port={self.port}:caCertsDir={authorities}"
                ":hostname=localhost")

    def _accept(self) -> None:
        while True:
            raw, _ = self.sock.accept()
            conn = SSL.Connection(self.context, raw)
            conn.set_accept_state()
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: SSL.Connection) -> None:
        try:
            self.handler(conn)
        except Exception as exc:  # whatever it is, the test reports it
            self.errors.append(repr(exc))


def test_an_ssl_upstream_hears_the_end_of_stdin_as_close_notify(proxy_factory,  # noqa: F811
                                                                  tmp_path):
    """The client half-closes a hijacked stream; a TLS daemon must get a close_notify (before,
    the TCP connection beneath TLS was half-closed, which TLS reads as a connection cut
    short), answer after it, and its own close_notify must reach the client as the end."""
    certs = make_certs(tmp_path)
    ends: list[str] = []

    def wc(conn: SSL.Connection) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        conn.sendall(UPGRADED)
        got = len(head) - head.index(b"\r\n\r\n") - 4
        try:
            while True:
                got += len(conn.recv(65536))
        except SSL.ZeroReturnError:
            ends.append("close_notify")
        conn.sendall(b"%d\n" % got)
        conn.shutdown()

    daemon = TLSDaemon(certs, wc)
    proxy = proxy_factory(daemon.upstream(certs))
    stdin = b"".join(b"%d\n" % i for i in range(100_000))
    for _ in range(3):
        sock = proxy.connect()
        sock.sendall(ATTACH)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 101 "), received
        sock.sendall(stdin)
        sock.shutdown(socket.SHUT_WR)
        rest = received[received.index(b"\r\n\r\n") + 4:]
        while chunk := sock.recv(65536):
            rest += chunk
        sock.close()
        assert rest == b"%d\n" % len(stdin), daemon.errors
    assert ends == ["close_notify"] * 3 and not daemon.errors
