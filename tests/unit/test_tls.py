"""``HalfCloseableTLS`` in memory: a client's close_notify is a half-close, and a paused
connection hands nothing on, however much one read of the socket carried.

The client is pyOpenSSL on memory BIOs, so exactly which records arrive in one read is up to the
test: a piping client's last stdin records and its close_notify come together, as they do from
``seq 100000 | docker run -i ...`` when the proxy reads slower than the client writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from powerstrip.proxy.tls import HalfCloseableTLS, HalfCloseableTLSClient, half_closeable_client
from tests.tlscerts import make_certs

pytestmark = pytest.mark.timeout(30)

#: A client's stdin: several full TLS records (16 KiB of plaintext at most each).
STDIN = bytes(range(256)) * 400


@implementer(interfaces.IHalfCloseableProtocol)
class Recorder(Protocol):
    """Records what the TLS layer hands on; ``on_data`` runs after each piece."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.on_data = lambda: None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.events.append(data)
        self.on_data()

    def readConnectionLost(self) -> None:  # noqa: N802
        self.events.append("eof")

    def writeConnectionLost(self) -> None:  # noqa: N802
        self.events.append("write closed")

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.events.append("lost")

    @property
    def data(self) -> bytes:
        return b"".join(e for e in self.events if isinstance(e, bytes))


class Pair:
    """A server ``HalfCloseableTLS`` on a string transport, and a pyOpenSSL client on memory
    BIOs, handshaken."""

    def __init__(self, certs: Path) -> None:
        pem = (certs / "server-cert.pem").read_bytes() + (certs / "server-key.pem").read_bytes()
        factory = TLSMemoryBIOFactory(PrivateCertificate.loadPEM(pem).options(), False,
                                      Factory.forProtocol(Recorder))
        factory.protocol = HalfCloseableTLS
        self.server = factory.buildProtocol(None)
        self.socket = StringTransport()
        self.server.makeConnection(self.socket)
        self.app: Recorder = self.server.wrappedProtocol
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(certs / "ca.pem"))
        context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except SSL.WantReadError:
                self.to_server(self.from_client())
                self.to_client()
        self.to_server(self.from_client())  # the client's Finished
        self.to_client()
        assert self.server._handshakeDone

    def from_client(self) -> bytes:
        """What the client has written to its socket so far."""
        out = b""
        while True:
            try:
                out += self.client.bio_read(1 << 20)
            except SSL.WantReadError:
                return out

    def to_server(self, data: bytes) -> None:
        """One read of the server's socket."""
        if data:
            self.server.dataReceived(data)

    def to_client(self) -> bytes:
        """Pass what the server wrote to the client; the plaintext the client reads."""
        wire = self.socket.value()
        self.socket.clear()
        if wire:
            self.client.bio_write(wire)
        plain = b""
        while True:
            try:
                plain += self.client.recv(1 << 16)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return plain

    def pipe_stdin_and_close_notify(self) -> bytes:
        """The client's stdin then its close_notify, as one read's worth of bytes."""
        self.client.sendall(STDIN)
        self.client.shutdown()
        return self.from_client()


@pytest.fixture
def pair(tmp_path) -> Pair:
    return Pair(make_certs(tmp_path))


def test_close_notify_is_a_half_close_and_the_answer_still_goes_out(pair):
    pair.to_server(pair.pipe_stdin_and_close_notify())
    assert pair.app.data == STDIN
    assert pair.app.events[-1] == "eof"
    pair.server.write(b"%d\n" % len(STDIN))
    pair.server.loseWriteConnection()
    assert pair.to_client() == b"%d\n" % len(STDIN)
    # Both close_notify have now gone: the socket beneath is closed.
    assert pair.socket.disconnecting


def test_a_paused_connection_hands_on_nothing_until_resumed(pair):
    """The end of input must not overtake a pause: the proxy pauses the client while the
    daemon's socket is full, and a half-close handed on then was lost."""
    pair.app.on_data = pair.server.pauseProducing
    pair.to_server(pair.pipe_stdin_and_close_notify())
    assert len(pair.app.events) == 1 and pair.app.events[0] == STDIN[:len(pair.app.data)]
    assert pair.socket.producerState == "paused"
    pair.app.on_data = lambda: None
    pair.server.resumeProducing()
    assert pair.app.data == STDIN
    assert pair.app.events[-1] == "eof" and pair.app.events.count("eof") == 1
    assert pair.socket.producerState == "producing"


def test_each_resume_hands_on_until_the_next_pause(pair):
    pauses = []

    def pause_each_time() -> None:
        pauses.append(len(pair.app.data))
        pair.server.pauseProducing()

    pair.app.on_data = pause_each_time
    pair.to_server(pair.pipe_stdin_and_close_notify())
    for _ in range(20):
        if "eof" in pair.app.events:
            break
        assert pair.socket.producerState == "paused"
        before = len(pair.app.events)
        pair.server.resumeProducing()
        assert len(pair.app.events) == before + 1  # one piece, then paused again
    assert pair.app.data == STDIN and pair.app.events[-1] == "eof"
    assert len(pauses) > 1


def test_a_resume_from_inside_data_received_goes_on_in_order(pair):
    """A protocol that pauses and resumes while handling a piece (a reason that comes and goes
    at once) gets the rest once each, in order, and the end after it."""
    def pause_and_resume() -> None:
        pair.server.pauseProducing()
        pair.server.resumeProducing()

    pair.app.on_data = pause_and_resume
    pair.to_server(pair.pipe_stdin_and_close_notify())
    assert pair.app.data == STDIN
    assert pair.app.events[-1] == "eof" and pair.app.events.count("eof") == 1
    assert pair.socket.producerState == "producing"


def test_a_connection_lost_while_paused_hands_on_what_was_read_first(pair):
    pair.app.on_data = pair.server.pauseProducing
    pair.to_server(pair.pipe_stdin_and_close_notify())
    pair.server.connectionLost(None)
    assert pair.app.data == STDIN
    assert pair.app.events[-1] == "lost"


def test_a_paused_connection_that_closes_still_reads_for_the_peers_ending(pair):
    """The proxy pauses a client it refuses, then closes: ending TLS waits for the client's
    close_notify, which must be read although the protocol paused (the connection stayed
    open, unread, before). What the client sent meanwhile is dropped, as a socket would."""
    pair.server.pauseProducing()
    pair.server.write(b"refused")
    pair.server.loseConnection()
    assert pair.socket.producerState == "producing"
    assert not pair.socket.disconnecting  # our close_notify is out; the client's is awaited
    assert pair.to_client() == b"refused"
    pair.client.sendall(b"more")
    pair.client.shutdown()
    pair.to_server(pair.from_client())
    assert pair.socket.disconnecting
    assert pair.app.events == []


def test_a_close_notify_read_before_a_paused_close_is_found(pair):
    """The client's close_notify came in the same read as data that made the proxy pause and
    close: closing finds it without another read."""
    def refuse() -> None:
        pair.server.pauseProducing()
        pair.server.loseConnection()

    pair.app.on_data = refuse
    pair.to_server(pair.pipe_stdin_and_close_notify())
    assert pair.socket.disconnecting
    assert pair.app.events == [STDIN[:len(pair.app.data)]]


def test_only_ssl_upstreams_get_the_half_closeable_endpoint(tmp_path):
    reactor = MemoryReactor()
    plain = clientFromString(reactor, "tcp:host=127.0.0.1:port=2375")
    assert half_closeable_client(plain) is plain
    endpoint = half_closeable_client(clientFromString(reactor, "ssl:host=127.0.0.1:port=2376"))
    assert isinstance(endpoint, HalfCloseableTLSClient)
    endpoint.connect(Factory.forProtocol(Recorder))
    (host, port, factory, _, _), = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 2376)
    # The TLS factory, under the wrapping the TCP endpoint adds (Twisted keeps it private).
    assert factory._wrappedFactory.protocol is HalfCloseableTLS
