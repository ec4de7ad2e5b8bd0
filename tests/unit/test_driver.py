"""The exchange machine's Twisted driver (``powerstrip.proxy.connection``), in memory.

The proxy runs on Twisted's memory reactor with string transports for the client and the daemon;
hooks answer through Deferreds the test fires. These check what the driver adds to the machine:
connecting to the daemon on the first request, pausing the client while hooks run, half-closes
in both directions, hijacks, shutdown and its deadline, and a daemon that cannot be reached.
"""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from powerstrip.hooks.client import HookError
from powerstrip.hooks.wire import ClientRequest
from powerstrip.proxy.addresses import parse_address
from powerstrip.proxy.connection import LINGER, ClientConnection, ProxyFactory
from powerstrip.proxy.limits import Limits

PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
CREATE_BODY = b'{"Image": "busybox"}'
CREATE = (b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
          % (len(CREATE_BODY), CREATE_BODY))


class Transport(StringTransport):
    """A string transport that also half-closes, as TCP and unix transports do."""

    write_closed = False

    def loseWriteConnection(self) -> None:  # noqa: N802
        self.write_closed = True


@dataclass
class _Config:
    max_body: int = 1 << 20


@dataclass
class _Plan:
    pre: tuple
    post: tuple
    config: _Config = field(default_factory=_Config)
    endpoints: str = '"POST /*/containers/create"'


class _Adapters:
    """The adapter client: each call waits for the test to fire it."""

    def __init__(self) -> None:
        self.pre: list[tuple[ClientRequest, defer.Deferred]] = []
        self.clients: list[object] = []

    def new_call_id(self) -> str:
        return "call-1"

    def run_pre(
        self, hooks: tuple, request: ClientRequest, call_id: str, client: object = None,
        records: object = None,
    ) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self.pre.append((request, done))
        self.clients.append(client)
        return done


class _Hooks:
    active = True
    clients = None  # no allowlist: every client may

    def __init__(self) -> None:
        self.adapters = _Adapters()

    def plan(self, method: bytes, target: bytes) -> _Plan | None:
        return _Plan(("policy",), ()) if target.endswith(b"/containers/create") else None


class Rig:
    def __init__(self, hooks: _Hooks | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = ProxyFactory(self.reactor, parse_address("unix:///nowhere/docker.sock"),
                                    hooks)
        self.client: ClientConnection = self.factory.buildProtocol(None)
        self.client_transport = Transport()
        self.client.makeConnection(self.client_transport)
        self.daemon_transport: Transport | None = None

    def connect_daemon(self) -> None:
        _, wrapping, *_ = self.reactor.unixClients[-1]
        self.daemon = wrapping.buildProtocol(None)
        self.daemon_transport = Transport()
        self.daemon.makeConnection(self.daemon_transport)

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def answer(self, data: bytes) -> None:
        self.daemon.dataReceived(data)

    @property
    def paused(self) -> bool:
        return self.client_transport.producerState == "paused"

    def answers(self) -> bytes:
        return self.client_transport.value()


def error_of(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["message"]


def test_the_first_request_opens_the_daemon_connection_and_waits_for_it():
    rig = Rig()
    rig.send(PING)
    assert rig.paused, "the client waits while the daemon connection is made"
    rig.connect_daemon()
    assert rig.daemon_transport.value() == PING
    assert not rig.paused
    rig.answer(PONG)
    assert rig.answers() == PONG


def test_pre_hooks_hold_the_request_and_pause_the_client_until_they_answer():
    hooks = _Hooks()
    rig = Rig(hooks)
    rig.send(PING)
    rig.connect_daemon()
    rig.answer(PONG)
    rig.send(CREATE)
    (request, done), = hooks.adapters.pre
    assert request.body == CREATE_BODY.decode()
    assert rig.daemon_transport.value() == PING, "nothing of it before the hooks approve"
    done.callback(ClientRequest(request.method, request.request, '{"Image": "other"}'))
    sent = rig.daemon_transport.value()[len(PING):]
    assert sent.endswith(b'{"Image": "other"}') and b"Content-Length: 18\r\n" in sent


def test_a_refusal_answers_the_client_and_keeps_the_connection_for_the_next_request():
    hooks = _Hooks()
    rig = Rig(hooks)
    rig.send(CREATE)
    (_, done), = hooks.adapters.pre
    done.errback(Failure(HookError(403, "refused by adapter policy: privileged")))
    status, message = error_of(rig.answers())
    assert (status, message) == (403, "refused by adapter policy: privileged")
    assert not rig.client_transport.disconnecting
    assert not rig.reactor.unixClients, "the refused request never opened a daemon connection"
    rig.send(PING)
    rig.connect_daemon()
    assert rig.daemon_transport.value() == PING


def test_a_late_hook_answer_after_the_client_left_does_nothing():
    hooks = _Hooks()
    rig = Rig(hooks)
    rig.send(CREATE)
    (request, done), = hooks.adapters.pre
    rig.client.connectionLost(Failure(ConnectionResetError()))
    done.callback(request)
    assert not rig.reactor.unixClients


def test_the_clients_end_of_input_reaches_the_daemon_after_its_request():
    rig = Rig()
    rig.send(PING)
    rig.client.readConnectionLost()
    assert rig.daemon_transport is None
    rig.connect_daemon()
    assert rig.daemon_transport.value() == PING and rig.daemon_transport.write_closed
    rig.answer(PONG)
    assert rig.answers() == PONG and rig.client_transport.disconnecting


def test_hijack_half_closes_each_way():
    rig = Rig()
    rig.send(b"POST /v1.41/containers/c/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: x\r\n"
             b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    rig.connect_daemon()
    rig.answer(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nout")
    rig.send(b"stdin")
    assert rig.daemon_transport.value().endswith(b"\r\n\r\nstdin")
    rig.client.readConnectionLost()
    assert rig.daemon_transport.write_closed and not rig.client_transport.disconnecting
    rig.daemon.readConnectionLost()
    assert rig.client_transport.write_closed
    assert rig.client_transport.disconnecting, "both ends finished: the connection closes"


def test_shutdown_lets_the_answer_finish_then_closes():
    rig = Rig()
    rig.send(PING)
    rig.connect_daemon()
    done = rig.factory.shutdown(5.0)
    assert not rig.client_transport.disconnecting
    rig.answer(PONG)
    assert rig.answers() == PONG and rig.client_transport.disconnecting
    rig.factory.connections.discard(rig.client)
    rig.reactor.advance(0.1)
    assert done.called


def test_the_shutdown_deadline_answers_a_waiting_request_with_503():
    rig = Rig()
    rig.send(PING)
    rig.connect_daemon()
    rig.factory.shutdown(5.0)
    rig.reactor.pump([0.05] * 101)
    status, message = error_of(rig.answers())
    assert status == 503 and "5 s shutdown grace" in message
    assert_lingering(rig)


def test_a_finished_connection_is_freed_without_the_garbage_collector():
    # In a burst, connections whose objects stayed in reference cycles made the collector run
    # often enough to cost a tenth of the proxy's time: both ends gone, nothing is left in one.
    gc.collect()
    gc.disable()
    try:
        rig = Rig()
        rig.send(PING)
        rig.connect_daemon()
        rig.answer(PONG)
        machine, framing = weakref.ref(rig.client.machine), weakref.ref(rig.client.machine.framing)
        client, daemon = weakref.ref(rig.client), weakref.ref(rig.daemon)
        rig.client.connectionLost(Failure(ConnectionDone()))
        assert machine() is not None, "kept until the daemon connection is gone too"
        rig.client_transport.disconnected = True
        rig.daemon.connectionLost(Failure(ConnectionDone()))
        # The memory reactor keeps what it connected, and the factory's timer ties the two in
        # a cycle of their own (the real ones live as long as the proxy): let go of those.
        rig.reactor.unixClients.clear()
        for call in rig.reactor.getDelayedCalls():
            call.cancel()
        del rig
        assert machine() is None and framing() is None
        assert client() is None and daemon() is None
    finally:
        gc.enable()


def test_an_unreachable_daemon_is_a_502_naming_it():
    rig = Rig()
    rig.send(PING)
    _, wrapping, *_ = rig.reactor.unixClients[-1]
    wrapping.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    status, message = error_of(rig.answers())
    assert status == 502 and "unix:///nowhere/docker.sock" in message
    assert_lingering(rig)


def assert_lingering(rig: Rig) -> None:
    """The client's connection, refused, is half-closed after its answer and read until it
    ends; past ``LINGER`` seconds it is reset."""
    transport = rig.client_transport
    assert transport.write_closed and not transport.disconnecting
    rig.reactor.advance(LINGER)
    assert transport.disconnected


def test_a_refused_client_still_sending_is_read_until_it_ends_then_closed():
    rig = Rig(_Hooks())
    # A body the hooks are not shown: the pre-hook is asked on the head alone, and the rest of
    # the upload is still on its way when the refusal comes.
    rig.send(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
             b"Content-Type: application/x-tar\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
    _, done = rig.factory.hooks.adapters.pre[0]
    done.errback(Failure(HookError(403, "refused by policy")))
    status, message = error_of(rig.answers())
    assert status == 403 and message == "refused by policy"
    transport = rig.client_transport
    assert transport.write_closed and not transport.disconnecting
    assert not transport.producerState == "paused", "the rest is read, to be dropped"
    rig.send(b"y" * 100_000)
    assert error_of(rig.answers())[0] == 403, "nothing more is written"
    rig.client.readConnectionLost()
    assert transport.disconnecting and not transport.disconnected
    rig.client.connectionLost(Failure(ConnectionDone()))
    lingering = rig.client.lingering
    assert lingering is not None and lingering.cancelled, "the deadline goes with the close"


def limited_rig(**limits: float) -> Rig:
    rig = Rig.__new__(Rig)
    rig.reactor = MemoryReactorClock()
    rig.factory = ProxyFactory(rig.reactor, parse_address("unix:///nowhere/docker.sock"), None,
                               Limits(**limits))
    rig.client = rig.factory.buildProtocol(None)
    rig.client_transport = Transport()
    rig.client.makeConnection(rig.client_transport)
    rig.daemon_transport = None
    return rig


def test_a_head_still_unfinished_after_the_head_timeout_gets_408():
    rig = limited_rig(head_timeout=3, idle_timeout=0)
    rig.send(b"GET /v1.41/_ping HTTP/1.1\r\n")
    rig.reactor.pump([1.0] * 3)
    rig.send(b"Host: x\r\n")  # a byte now and then does not reset the clock
    assert not rig.client_transport.disconnecting
    rig.reactor.pump([1.0] * 2)
    status, message = error_of(rig.answers())
    assert status == 408 and "3 s" in message
    assert_lingering(rig)


def test_an_idle_connection_is_closed_after_the_idle_timeout_but_not_before():
    rig = limited_rig(head_timeout=0, idle_timeout=5)
    rig.send(PING)
    rig.connect_daemon()
    rig.answer(PONG)
    for _ in range(4):  # requests now and then keep it open
        rig.reactor.pump([1.0] * 3)
        rig.send(PING)
        rig.answer(PONG)
    assert not rig.client_transport.disconnecting
    rig.reactor.pump([1.0] * 7)
    assert rig.client_transport.disconnecting and rig.answers() == PONG * 5


def test_a_quiet_stream_outlives_every_timeout():
    rig = limited_rig(head_timeout=1, idle_timeout=1)
    rig.send(b"GET /v1.41/events HTTP/1.1\r\nHost: x\r\n\r\n")
    rig.connect_daemon()
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    rig.reactor.pump([1.0] * 30)
    assert not rig.client_transport.disconnecting


def test_past_max_connections_a_client_gets_503_and_is_let_go():
    rig = limited_rig(max_connections=1)
    refused = rig.factory.buildProtocol(None)
    transport = Transport()
    refused.makeConnection(transport)
    status, message = error_of(transport.value())
    assert status == 503 and "--max-connections" in message and "1 client" in message
    assert transport.write_closed
    refused.dataReceived(b"GET /_ping HTTP/1.1\r\n\r\n")  # read and dropped
    refused.readConnectionLost()
    assert transport.disconnecting
    rig.client.connectionLost(Failure(ConnectionResetError()))
    assert isinstance(rig.factory.buildProtocol(None), ClientConnection), "room again"
