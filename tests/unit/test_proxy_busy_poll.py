"""When the proxy asks its reactor to busy-poll: only for a client sending requests back to back.

The proxy runs here on Twisted's in-memory reactor and string transports, with a clock the test
moves; the reactor's ``expect_soon`` records each time the proxy asks for a spin.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport

from powerstrip.proxy.addresses import parse_address
from powerstrip.proxy.connection import ClientConnection, ProxyFactory

PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"


class _Rig:
    def __init__(self, busy_poll: float = 0.0002) -> None:
        self.reactor = MemoryReactorClock()
        self.spins: list[float] = []
        self.reactor.busy_poll = busy_poll
        self.reactor.expect_soon = lambda: self.spins.append(self.reactor.seconds())
        factory = ProxyFactory(self.reactor, parse_address("unix:///nowhere/docker.sock"))
        self.client: ClientConnection = factory.buildProtocol(None)
        self.client_transport = StringTransport()
        self.client.makeConnection(self.client_transport)
        self.daemon_transport: StringTransport | None = None

    def request(self, data: bytes = PING) -> None:
        self.client.dataReceived(data)
        if self.daemon_transport is None:
            # The daemon connection the first request opened: complete it.
            _, wrapping, *_ = self.reactor.unixClients[0]
            self.daemon = wrapping.buildProtocol(None)
            self.daemon_transport = StringTransport()
            self.daemon.makeConnection(self.daemon_transport)

    def answer(self, data: bytes = PONG) -> None:
        self.daemon.dataReceived(data)

    def spun(self) -> int:
        count, self.spins[:] = len(self.spins), []
        return count


def test_spins_only_while_requests_follow_their_answers_within_the_window():
    rig = _Rig()
    rig.request()
    rig.answer()
    assert rig.spun() == 0, "a connection's first request is never back to back"
    rig.reactor.advance(0.0001)
    rig.request()
    assert rig.spun() == 1, "a request that came quickly: spin for the daemon's answer"
    rig.answer()
    assert rig.spun() == 1, "and for the client's next request"
    rig.reactor.advance(0.001)
    rig.request()
    rig.answer()
    assert rig.spun() == 0, "a client that paused longer than the window makes no spin"
    assert rig.daemon_transport.value() == PING * 3
    assert rig.client_transport.value() == PONG * 3


def test_pipelined_requests_count_as_back_to_back():
    rig = _Rig()
    rig.request(PING * 3)
    rig.answer()
    rig.answer()
    rig.answer()
    # The second and third started the moment the answer before them ended: each asks for its
    # answer, and the last answer asks for the next request.
    assert rig.spun() == 3
    assert rig.client_transport.value() == PONG * 3


def test_a_hijacked_connection_makes_no_spin():
    rig = _Rig()
    rig.request()
    rig.answer()
    rig.request(b"POST /v1.41/containers/x/attach?stream=1 HTTP/1.1\r\nHost: x\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n")
    assert rig.spun() == 1  # the upgrade's answer
    rig.answer(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    for _ in range(5):
        rig.answer(b"raw output")
        rig.client.dataReceived(b"raw input")
    assert rig.spun() == 0



def test_no_busy_poll_means_no_bookkeeping_and_no_spin():
    rig = _Rig(busy_poll=0.0)
    for _ in range(3):
        rig.request()
        rig.answer()
    assert rig.client.pace is None
    assert rig.spun() == 0
