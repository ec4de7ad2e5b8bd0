"""The Twisted driver of the exchange machine: client connections and daemon connections.

Each client connection gets its own daemon connection, opened on its first request and kept for
as long as the client keeps its own. That mirrors the client's connection state exactly: keep-alive,
``Connection: close`` and hijacking (attach, exec start, BuildKit's h2c) need no translation, and
ordering of pipelined requests follows from answering them one at a time.

What happens to the bytes is decided by ``powerstrip.core.exchange.Machine``; this module only
turns transport callbacks into its events and performs the actions it asks for: writing,
connecting to the daemon, calling adapters, pausing and closing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from powerstrip.core.errors import error_response
from powerstrip.core.exchange import Exchange, Machine, RequestState, ResponseState
from powerstrip.core.identity import Client
from powerstrip.core.paths import canonical_path
from powerstrip.hooks.client import HookError
from powerstrip.hooks.live import LiveConfig
from powerstrip.hooks.wire import ClientRequest, ServerResponse
from powerstrip.observe.observer import Observer
from powerstrip.observe.records import RequestRecord
from powerstrip.proxy.addresses import Address, upstream_endpoint
from powerstrip.proxy.flow import Pauser, direct_reads, no_delay, send
from powerstrip.proxy.limits import Limits
from powerstrip.proxy.peer import client_of
from powerstrip.proxy.reactor import BackToBack
from powerstrip.proxy.tls import half_closeable_client

log = logging.getLogger(__name__)

#: After the shutdown grace, how long the errors sent to requests still waiting may take to
#: leave before their connections are dropped.
SHUTDOWN_FLUSH = 1.0


@implementer(interfaces.IHalfCloseableProtocol)
class DaemonConnection(Protocol):
    """The proxy's connection to the Docker daemon on behalf of one client connection."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.pauser: Pauser | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.pauser = Pauser(self.transport)
        no_delay(self.transport)
        direct_reads(self.transport, self.client.daemon_data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.client.daemon_data(data)

    def readConnectionLost(self) -> None:  # noqa: N802
        self.client.daemon_eof(self)

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self.client.daemon_lost(self)


@implementer(interfaces.IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """A connection from a Docker client (the CLI, an SDK, compose): the machine's driver.

    It is the machine's ``Effects``: every action the machine asks for is a method here.
    """

    factory: ProxyFactory

    def __init__(self) -> None:
        self.daemon: DaemonConnection | None = None
        self.connecting: defer.Deferred | None = None
        #: Bytes for the daemon while no connection to it is ready.
        self.pending: list[bytes] = []
        #: The machine asked for the daemon's input to end (done on connect if not yet made).
        self.daemon_half_closed = False
        self.machine: Machine | None = None
        #: Whether the client sends requests back to back; None when nothing busy-polls.
        self.pace: BackToBack | None = None
        #: Since when the timers have seen the connection quiet, and in what (``check_timers``).
        self.quiet_since: float | None = None
        self.quiet_mark: tuple[int, bool] = (0, False)
        self._client: Client | None = None
        #: Bytes passed on each way; ``_marks`` where the exchange being reported began.
        self.sent_daemon = 0
        self.sent_client = 0
        self._marks = (0, 0)
        self._listener: str | None = None
        #: The deadline of a lingering close (``close_lingering``), once one began.
        self.lingering: interfaces.IDelayedCall | None = None

    @property
    def listener(self) -> str:
        """The listener this connection came in on, as the metrics name it."""
        listener = self._listener
        if listener is None:
            try:
                address = self.transport.getHost()
            except OSError:
                address = None
            name = getattr(address, "name", None)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if name is not None:
                listener = f"unix://{name}"
            elif hasattr(address, "port"):
                listener = f"tcp://{address.host}:{address.port}"
            else:
                listener = "unknown"
            self._listener = listener
        return listener

    @property
    def client(self) -> Client:
        """Who is at the other end, read once, when first asked: a TLS client's certificate
        is known only once the handshake is over, which the first request's arrival implies."""
        client = self._client
        if client is None:
            client = self._client = client_of(self.transport)
        return client

    # Transport callbacks, as the machine's events

    def connectionMade(self) -> None:  # noqa: N802
        factory = self.factory
        self.pauser = Pauser(self.transport)
        window = factory.busy_poll
        self.pace = BackToBack(window) if window else None
        self.machine = Machine(self, factory.hooks, factory.upstream_text, self.pace,
                               factory.reactor.seconds,
                               self._refusal if factory.hooks is not None else None,
                               self._report if factory.observer is not None else None)
        self.dataReceived = self.machine.client_data
        no_delay(self.transport)
        direct_reads(self.transport, self.machine.client_data)
        factory.connections.add(self)

    def readConnectionLost(self) -> None:  # noqa: N802
        if self.lingering is not None:
            self.transport.loseConnection()
            return
        self.machine.client_ended()

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        if self.lingering is not None and self.lingering.active():
            self.lingering.cancel()
        self.machine.client_gone()
        self.factory.connections.discard(self)
        self.factory.bytes_closed[0] += self.sent_daemon
        self.factory.bytes_closed[1] += self.sent_client
        if self.daemon is not None:
            self._drop_daemon(self.daemon)
        elif self.connecting is not None:
            self.connecting.cancel()
        self._release_if_done()

    def _report(self, exchange: Exchange, status: int) -> None:
        """The machine's report of an exchange that ended: counted, and recorded in full
        when an audit log or a trace watcher wants it."""
        observer = self.factory.observer
        head = exchange.head
        plan = exchange.plan
        endpoint = plan.endpoint if plan is not None else ""
        method = _METHODS.get(head.method, "other")
        head_seconds = None if exchange.head_at is None else exchange.head_at - exchange.began
        observer.stats.request(method, endpoint, status, head_seconds)
        marks = self._marks
        self._marks = (self.sent_daemon, self.sent_client)
        if not observer.records:
            return
        target = head.target.decode("latin-1")
        record = RequestRecord(
            exchange.began, exchange.call_id, self.client, head.method.decode("latin-1"),
            target, canonical_path(target) or target.partition("?")[0], endpoint,
            exchange.hook_records or [], status, self.sent_daemon - marks[0],
            self.sent_client - marks[1], self.factory.reactor.seconds() - exchange.began,
            head_seconds)
        observer.request_ended(record)

    def _refusal(self) -> str | None:
        """Why this client may not use the proxy under the configuration in force, or None."""
        policy = self.factory.hooks.clients
        if policy is None:
            return None
        refusal = policy.refusal(self.client)
        if refusal is not None:
            log.warning("refused %s: the 'clients' allowlist of %s does not name it",
                        self.client.describe(), self.factory.hooks.config.source)
        return refusal

    def daemon_data(self, data: bytes) -> None:
        """Bytes from the daemon."""
        self.machine.daemon_data(data)

    def daemon_eof(self, daemon: DaemonConnection) -> None:
        """The daemon closed its side of the connection."""
        if daemon is self.daemon:
            self.machine.daemon_ended()

    def daemon_lost(self, daemon: DaemonConnection) -> None:
        """The daemon connection is gone."""
        if daemon is not self.daemon:
            return
        self.daemon = None
        self.daemon_half_closed = False
        if not self.transport.disconnected:
            self.transport.unregisterProducer()
        self.pauser.resume("flow")
        self.pauser.resume("daemon closing")
        observer = self.factory.observer
        if observer is not None and self.machine.response_state in _OWED:
            # The daemon went while it owed an answer (a stream it ends is not counted: its
            # response is whole by then).
            observer.stats.upstream_errors["lost"] += 1
        self.machine.daemon_gone()
        if self.transport.disconnected:
            self._release_if_done()

    def _release_if_done(self) -> None:
        """Once the client's connection is gone (the caller knows), and no daemon connection
        is left or being made: untie this connection, its machine and its transport.

        The machine calls back into this connection, and the transport's reads go straight to
        the machine (``direct_reads``): a cycle, which only the garbage collector would free.
        In a burst of connections that made it run often enough to cost a tenth of the proxy's
        time; without the cycle, each connection's objects go the moment it ends.
        """
        if self.daemon is not None or self.connecting is not None:
            return
        self.transport.__dict__.pop("doRead", None)
        self.__dict__.pop("dataReceived", None)
        self.machine.release()
        self.machine = None

    def shutdown(self) -> None:
        """Close once idle; called when the proxy stops."""
        self.machine.shutdown()

    def check_timers(self, now: float, head_timeout: float, idle_timeout: float) -> None:
        """Fire the head or idle timeout once the connection has been quiet that long.

        Quiet means between requests, with the same requests begun and the same (empty or
        not) partial head since ``quiet_since``: looked at once a second, so the hot path
        keeps no clock of its own.
        """
        machine = self.machine
        if machine.request_state is not RequestState.IDLE:
            self.quiet_since = None
            return
        mark = (machine.started, machine.reader.buffered > 0)
        if self.quiet_since is None or mark != self.quiet_mark:
            self.quiet_since, self.quiet_mark = now, mark
            return
        waited = now - self.quiet_since
        if mark[1]:
            if head_timeout and waited >= head_timeout:
                machine.head_timeout(head_timeout)
        elif idle_timeout and waited >= idle_timeout:
            machine.idle_timeout(idle_timeout)

    def cut_short(self, grace: float) -> None:
        """The shutdown grace has run out while this connection was still busy."""
        if not self.transport.disconnected:
            self.machine.deadline(grace)

    # The machine's effects

    def to_daemon(self, data: bytes) -> None:
        """Send to the daemon, connecting first when there is no connection."""
        self.sent_daemon += len(data)
        daemon = self.daemon
        if daemon is not None and not self.pending:
            send(daemon.transport, data)
            return
        self.pending.append(data)
        if daemon is None and self.connecting is None:
            self._connect()

    def to_client(self, data: bytes) -> None:
        """Send to the client."""
        self.sent_client += len(data)
        if not self.transport.disconnected:
            send(self.transport, data)

    def half_close_daemon(self) -> None:
        """End the daemon's input once what was sent has left."""
        self.daemon_half_closed = True
        if self.daemon is not None:
            self._end_daemon_input(self.daemon)

    def half_close_client(self) -> None:
        """End the client's input."""
        self.transport.loseWriteConnection()

    def close_daemon(self) -> None:
        """Close the daemon connection (the daemon ended its side)."""
        daemon = self.daemon
        if daemon is not None:
            # The client stops being the transport's producer (see ``_drop_daemon``), so the
            # daemon's buffer no longer holds it back: until the connection is gone, what the
            # client sends waits unread rather than piling up behind the close. Once it is
            # gone, the machine decides what becomes of it (a new connection, or nothing).
            self.pauser.pause("daemon closing")
            self._drop_daemon(daemon)

    def close(self) -> None:
        """Close both connections once what was sent has left."""
        self.transport.loseConnection()
        if self.daemon is not None:
            self._drop_daemon(self.daemon)

    def close_lingering(self) -> None:
        """Close the daemon connection, half-close the client's once the answer has left, and
        drop what the client still sends until it ends its side or ``LINGER`` seconds pass
        (as a web server's lingering close: the answer must not be lost to a reset)."""
        if self.daemon is not None:
            self._drop_daemon(self.daemon)
        transport = self.transport
        if transport.disconnected:
            return
        # The machine is closed: what is read now goes to it and is ignored.
        self.lingering = self.factory.reactor.callLater(LINGER, transport.abortConnection)
        transport.loseWriteConnection()
        self.pauser.resume_all()

    def abort(self) -> None:
        """Reset both connections."""
        self.transport.abortConnection()
        if self.daemon is not None:
            self.daemon.transport.abortConnection()

    def pause(self, reason: str) -> None:
        """Stop reading from the client for ``reason``."""
        self.pauser.pause(reason)

    def resume(self, reason: str) -> None:
        """Drop a reason to stop reading from the client."""
        self.pauser.resume(reason)

    def expect_soon(self) -> None:
        """Ask the reactor to busy-poll for what is due."""
        self.factory.expect_soon()

    def call_pre_hooks(self, exchange: Exchange, request: ClientRequest) -> None:
        """Run the pre-hooks; their answer goes back to the machine."""
        adapters = self.factory.hooks.adapters
        exchange.call_id = adapters.new_call_id()
        observer = self.factory.observer
        if observer is not None and observer.records:
            exchange.hook_records = []
        done = adapters.run_pre(exchange.plan.pre, request, exchange.call_id, self.client,
                                exchange.hook_records)
        done.addCallbacks(self._pre_hooks_done, self._hooks_failed,
                          callbackArgs=(exchange,), errbackArgs=(exchange,))

    def call_post_hooks(
        self, exchange: Exchange, request: ClientRequest, response: ServerResponse
    ) -> None:
        """Run the post-hooks; their answer goes back to the machine."""
        observer = self.factory.observer
        if exchange.hook_records is None and observer is not None and observer.records:
            exchange.hook_records = []
        done = self.factory.hooks.adapters.run_post(exchange.plan.post, request, response,
                                                    exchange.call_id, self.client,
                                                    exchange.hook_records)
        done.addCallbacks(self._post_hooks_done, self._hooks_failed,
                          callbackArgs=(exchange,), errbackArgs=(exchange,))

    # A hook's answer may come after both connections are gone (and the machine released).

    def _pre_hooks_done(self, changed: ClientRequest, exchange: Exchange) -> None:
        if self.machine is not None:
            self.machine.pre_hooks_done(exchange, changed)

    def _post_hooks_done(self, changed: ServerResponse, exchange: Exchange) -> None:
        if self.machine is not None:
            self.machine.post_hooks_done(exchange, changed)

    def _hooks_failed(self, failure: Failure, exchange: Exchange) -> None:
        if self.machine is None:
            return
        if failure.check(HookError):
            status, message = failure.value.status, failure.value.message
        else:
            log.error("hook chain failed for %s: %s", self.client.describe(),
                      failure.getTraceback())
            status, message = 502, f"calling adapters failed: {failure.getErrorMessage()}"
        self.machine.hooks_failed(exchange, status, message)

    def _connect(self) -> None:
        # Not connectProtocol: it builds a factory class on every call, a share of each
        # connection's cost that shows in a burst.
        connecting = self.factory.upstream_endpoint.connect(_OneDaemon(DaemonConnection(self)))
        self.connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)
        # A unix connect usually completes in this call, and its callbacks have run: only a
        # connection still being made holds the client's reading back (a pause now would
        # cost two epoll_ctl calls per connection for nothing).
        if self.connecting is connecting:
            self.pauser.pause("connecting")

    def _connected(self, daemon: DaemonConnection) -> None:
        self.connecting = None
        if self.machine.closed or self.transport.disconnected:
            daemon.transport.loseConnection()
            return
        self.daemon = daemon
        daemon.transport.registerProducer(self.pauser, True)
        self.transport.registerProducer(daemon.pauser, True)
        pending, self.pending = self.pending, []
        if pending:
            # Straight to the socket, like every later write: through the transport's buffer
            # the request would wait a reactor turn (and two epoll_ctl calls) to leave.
            send(daemon.transport, pending[0] if len(pending) == 1 else b"".join(pending))
        if self.daemon_half_closed:
            self._end_daemon_input(daemon)
        self.pauser.resume("connecting")

    def _end_daemon_input(self, daemon: DaemonConnection) -> None:
        """Half-close the daemon connection once what was written to it has left.

        The client's input has ended, so it produces nothing more for the daemon and stops
        being the producer of the daemon's transport first. Otherwise, with more than the
        transport's high-water mark queued (a body held for pre-hooks and let go after the
        client half-closed), the client is paused as that producer, and Twisted answers the
        drained buffer by resuming it instead of by the half-close, and does not look again:
        the daemon would never hear the end of input (of a hijacked stream's stdin, say).
        """
        self._stop_producing_for(daemon)
        # Nothing will resume the client for the daemon's buffer now; its other reasons stand.
        self.pauser.resume("flow")
        daemon.transport.loseWriteConnection()

    def _drop_daemon(self, daemon: DaemonConnection) -> None:
        """Close the daemon connection once what was written to it has left.

        Nothing more the client sends is for this connection, so the client stops being the
        producer of the daemon's transport first. Otherwise, with more than the transport's
        high-water mark queued (a daemon slow to read a body or stdin), the client is paused
        as that producer, and Twisted answers the drained buffer by resuming it instead of by
        the close, and does not look again, not even for the daemon's own close: the
        connection and its descriptor would stay for as long as the daemon keeps its end (an
        attach, a stream, a lingering close that reads until the proxy closes).
        """
        self._stop_producing_for(daemon)
        daemon.transport.loseConnection()

    @staticmethod
    def _stop_producing_for(daemon: DaemonConnection) -> None:
        """The client stops being the producer of the daemon's transport, if it still is (a
        half-close or an earlier close may have ended that already)."""
        transport = daemon.transport
        if transport.producer is not None:
            transport.unregisterProducer()

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        self.pending = []
        if self.factory.observer is not None:
            self.factory.observer.stats.upstream_errors["unreachable"] += 1
        self.machine.daemon_unreachable(failure.getErrorMessage())


#: Response states in which the daemon owes (the rest of) an answer.
_OWED = frozenset({ResponseState.WAITING, ResponseState.STREAMING, ResponseState.COLLECTING})

#: The methods the metrics name; any other is counted as "other", so that a client cannot make
#: the label's values grow without bound.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

#: How long a lingering close reads and drops what a refused client still sends: its answer
#: went out before, so the client has had this long to read it before a reset could spoil it.
LINGER = 2.0

#: How often the timers look at the connections: timeouts end within this much of their time.
TIMER_INTERVAL = 1.0


@implementer(interfaces.IHalfCloseableProtocol)
class TooManyConnections(Protocol):
    """A client past ``--max-connections``: told so with a Docker-style 503, then let go."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(error_response(
            503, f"Powerstrip has {self.limit} client connections open, its limit "
                 "(--max-connections): try again later"))
        # Its request is read and dropped until it ends: closing with unread bytes would reset
        # the connection, and the client might lose the answer.
        self.transport.loseWriteConnection()
        self.timer = self.factory.reactor.callLater(2.0, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass

    def readConnectionLost(self) -> None:  # noqa: N802
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        if self.timer.active():
            self.timer.cancel()


class _OneDaemon(Factory):
    """The factory of one daemon connection: its protocol, made before the connection is."""

    noisy = False

    def __init__(self, protocol: DaemonConnection) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: object) -> DaemonConnection:  # noqa: N802 - Twisted's name
        return self.protocol_instance


class ProxyFactory(Factory):
    """Builds a ClientConnection per accepted client; all of them share one upstream."""

    protocol = ClientConnection
    noisy = False

    def __init__(self, reactor: object, upstream: Address, hooks: LiveConfig | None = None,
                 limits: Limits | None = None, observer: Observer | None = None) -> None:
        self.reactor = reactor
        #: Told of every request (None: nobody watches, and nothing is counted).
        self.observer = observer
        #: Bytes to the daemon and to clients of the connections that have closed.
        self.bytes_closed = [0, 0]
        if observer is not None:
            observer.stats.refresh = self.refresh_stats
            if hooks is not None:
                hooks.observe(observer)
        self.upstream = upstream
        self.hooks = hooks
        self.limits = limits = limits or Limits()
        # An ssl: daemon hears a client's half-close as TLS says it (close_notify).
        self.upstream_endpoint = half_closeable_client(upstream_endpoint(reactor, upstream))
        self.upstream_text = str(upstream)
        self.connections: set[ClientConnection] = set()
        self._timers = None
        if limits.head_timeout or limits.idle_timeout:
            self._timers = reactor.callLater(TIMER_INTERVAL, self._check_timers)
        #: Tells the reactor an answer is due soon, so that it busy-polls for it (see
        #: powerstrip.proxy.reactor); with a reactor that cannot, connections do not keep track.
        self.expect_soon: Callable[[], None] = getattr(reactor, "expect_soon", _nothing)
        self.busy_poll: float = getattr(reactor, "busy_poll", 0.0)

    def refresh_stats(self) -> None:
        """Bring the gauges and byte counts up to date, from the open connections (read when
        the metrics are scraped, so the hot path keeps no running totals)."""
        stats = self.observer.stats
        listeners: dict[str, int] = {}
        hijacked = streams = 0
        to_daemon, to_client = self.bytes_closed
        for connection in self.connections:
            to_daemon += connection.sent_daemon
            to_client += connection.sent_client
            listener = connection.listener
            listeners[listener] = listeners.get(listener, 0) + 1
            machine = connection.machine
            if machine is None:
                continue
            if machine.request_state is RequestState.HIJACKED:
                hijacked += 1
            elif machine.response_state is ResponseState.STREAMING:
                streams += 1
        stats.connections_open.clear()
        stats.connections_open.update(listeners)
        stats.hijacked_open, stats.streams_open = hijacked, streams
        stats.bytes["to_daemon"], stats.bytes["to_client"] = to_daemon, to_client

    def buildProtocol(self, addr: object) -> Protocol:  # noqa: N802
        limit = self.limits.max_connections
        if limit and len(self.connections) >= limit:
            log.warning("refusing a client: %d connections open (--max-connections)", limit)
            refusal = TooManyConnections(limit)
            refusal.factory = self
            return refusal
        protocol = ClientConnection()
        protocol.factory = self
        return protocol

    def _check_timers(self) -> None:
        """Once a second: end heads begun too long ago, and connections idle too long."""
        now = self.reactor.seconds()
        limits = self.limits
        for connection in list(self.connections):
            connection.check_timers(now, limits.head_timeout, limits.idle_timeout)
        self._timers = self.reactor.callLater(TIMER_INTERVAL, self._check_timers)

    def shutdown(self, grace: float) -> defer.Deferred:
        """Let open requests finish for up to ``grace`` seconds, then end what is left: a
        request still waiting for its answer gets a 503, anything else is cut."""
        if self._timers is not None and self._timers.active():
            self._timers.cancel()
        for connection in list(self.connections):
            connection.shutdown()
        done: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + grace
        cut = [False]

        def check() -> None:
            now = self.reactor.seconds()
            if not self.connections:
                done.callback(None)
            elif now >= deadline + SHUTDOWN_FLUSH:
                for connection in list(self.connections):
                    connection.transport.abortConnection()
                done.callback(None)
            else:
                if now >= deadline and not cut[0]:
                    cut[0] = True
                    for connection in list(self.connections):
                        connection.cut_short(grace)
                self.reactor.callLater(0.05, check)

        check()
        return done


def _nothing() -> None:
    pass
