"""The Twisted side of the proxy: client connections, daemon connections and flow control.

Each client connection gets its own daemon connection, opened on its first request and kept for
as long as the client keeps its own. That mirrors the client's connection state exactly: keep-alive,
``Connection: close`` and hijacking (attach, exec start, BuildKit's h2c) need no translation, and
ordering of pipelined requests follows from answering them one at a time.

Bytes are forwarded as they arrived. The framing readers only watch the stream to learn where each
request and response ends and when a connection stops being HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from twisted.internet import defer, interfaces
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from powerstrip.core.errors import error_response
from powerstrip.core.framing import (
    END,
    Body,
    BodyKind,
    CollectingResponseReader,
    FramingError,
    Head,
    RequestHead,
    RequestReader,
    ResponseReader,
    build_request_head,
    build_response,
    decode_chunked,
)
from powerstrip.hooks.client import HookError
from powerstrip.hooks.live import LiveConfig
from powerstrip.hooks.matching import SpellingError, canonical_path
from powerstrip.hooks.plans import Plan, hidden_from_hooks, is_json, is_stream, is_text
from powerstrip.hooks.wire import ClientRequest, ServerResponse
from powerstrip.proxy.addresses import Address, client_description
from powerstrip.proxy.flow import Pauser, direct_reads, no_delay, send
from powerstrip.proxy.reactor import BackToBack

log = logging.getLogger("powerstrip.proxy")

#: Bytes of pipelined requests held before the proxy stops reading from the client.
PIPELINE_HIGH_WATER = 256 * 1024
#: After the shutdown grace, how long the errors sent to requests still waiting may take to
#: leave before their connections are dropped.
SHUTDOWN_FLUSH = 1.0


class Exchange:
    """One request and its response on a client connection.

    The class attributes are the starting values: a plain request sets only what differs.
    """

    #: Whether the whole request has been read from the client.
    request_done = False
    response_done = False
    #: Whether any response byte has been sent to the client.
    forwarded = False
    #: Raw request body bytes held back while pre-hooks run; None once forwarding.
    held: list[bytes] | None = None
    held_size = 0
    #: The body is JSON that pre-hooks are shown: held whole, until the request ends.
    buffer_json = False
    #: The request as the last pre-hook left it, for post-hooks.
    hooked_request: ClientRequest | None = None
    #: Post-hooks see this response: it is held whole instead of forwarded as it comes.
    collect = False
    response_raw: list[bytes] = []  # replaced, never appended to, while empty
    #: Sent with every hook call for this request (``Powerstrip-Call``).
    call_id: str | None = None

    def __init__(
        self, head: RequestHead, plan: Plan | None = None, framing: ResponseReader | None = None,
    ) -> None:
        """``framing`` is the connection's framing-only response reader, reused for a
        response nobody inspects."""
        self.head = head
        self.plan = plan
        hijack = head.may_hijack
        if plan is not None and plan.post and not hijack:
            target = head.target.decode("latin-1")
            # The routed path, so that no spelling of a stream gets it held for post-hooks.
            path = canonical_path(target) or target.partition("?")[0]
            self.collect = not is_stream(path, target.partition("?")[2])
        if self.collect:
            self.response: ResponseReader = CollectingResponseReader(head.method)
            self.response_raw = []
        elif (framing is not None and not hijack and head.method != b"HEAD"
                and head.body_kind is BodyKind.NONE):
            self.response = framing.restart()
        else:
            self.response = ResponseReader(head.method, headers=hijack)


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
    """A connection from a Docker client (the CLI, an SDK, compose)."""

    factory: ProxyFactory

    def __init__(self) -> None:
        self.reader = RequestReader()
        #: Follows the daemon's responses to plain requests, one llhttp parser for them all.
        self.framing = ResponseReader(headers=False, head=False)
        self.daemon: DaemonConnection | None = None
        self.connecting: defer.Deferred | None = None
        #: Bytes for the daemon while no connection to it is ready.
        self.pending: list[bytes] = []
        self.exchange: Exchange | None = None
        self.raw = False
        self.client_eof = False
        #: The client's end of input has been passed on to the daemon (or will be, on connect).
        self.eof_forwarded = False
        self.draining = False
        self.daemon_eof_seen = False
        self.closing = False
        #: Whether the client sends requests back to back; None when nothing busy-polls.
        self.pace: BackToBack | None = None

    # Client side

    def connectionMade(self) -> None:  # noqa: N802
        self.pauser = Pauser(self.transport)
        window = self.factory.busy_poll
        self.pace = BackToBack(window) if window else None
        no_delay(self.transport)
        direct_reads(self.transport, self.dataReceived)
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.raw:
            self._to_daemon(data)
            return
        if self.closing:
            return
        reader = self.reader
        try:
            head = reader.whole_request(data)
            if head is None:
                events = reader.feed(data)
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return
        if head is not None:
            if self._start(head):
                self._request_read()
        elif events:
            self._handle(events)
        elif reader.waiting and reader.buffered > PIPELINE_HIGH_WATER:
            self.pauser.pause("pipeline")

    def _handle(self, events: list) -> None:
        for event in events:
            if self.closing:
                return  # refused part-way (413, a hook failure): the rest is not for anyone
            kind = event.__class__
            if kind is Body:
                exchange = self.exchange
                if exchange.held is None:
                    self._to_daemon(event.data)
                else:
                    self._hold(exchange, event.data)
            elif kind is Head:
                if not self._start(event.head):
                    return
            elif event is END:
                self._request_read()
                return  # the last event: the reader waits after each request

    def _request_read(self) -> None:
        """The current request has been read whole."""
        if self.pace is not None and self.pace.quick:
            self.factory.expect_soon()  # the daemon's answer, or the pre-hooks' adapters'
        exchange = self.exchange
        exchange.request_done = True
        if exchange.buffer_json and exchange.held is not None:
            self._run_pre_hooks(exchange)
        elif exchange.response_done:
            self._finish_exchange()

    def _start(self, head: RequestHead) -> bool:
        """Begin an exchange; False if the request was refused and the connection is ending."""
        if self.pace is not None:
            self.pace.request(self.factory.reactor.seconds())
        hooks = self.factory.hooks
        if hooks is None or not hooks.active:
            plan = None
        else:
            try:
                plan = hooks.plan(head.method, head.target)
            except SpellingError as exc:
                self.exchange = Exchange(head)
                self._refuse(400, f"refused {head.method.decode()} {_text(head.target)}: {exc}")
                return False
        exchange = self.exchange = Exchange(head, plan, self.framing)
        if plan is None or not plan.pre:
            self._to_daemon(head.raw)
            return True
        exchange.held = []
        problem = hidden_from_hooks(head.method, head.headers,
                                    head.body_kind is not BodyKind.NONE)
        if problem is not None:
            self._refuse(400, f"refused {head.method.decode()} {_text(head.target)}: "
                              f"{problem}, on an endpoint with pre-hooks "
                              f"(endpoint {plan.endpoints})")
            return False
        content_type = head.header(b"content-type")
        if head.body_kind is not BodyKind.NONE and is_json(content_type):
            limit = plan.config.max_body
            if head.body_kind is BodyKind.LENGTH and head.content_length > limit:
                self._too_large(exchange, head.content_length)
                return False
            exchange.buffer_json = True
        else:
            # Body: null for the hooks; whatever body there is waits, unread, for their answer.
            self.pauser.pause("hooks")
            self._run_pre_hooks(exchange)
        return True

    def _hold(self, exchange: Exchange, data: bytes) -> None:
        exchange.held.append(data)
        exchange.held_size += len(data)
        if exchange.buffer_json and exchange.held_size > exchange.plan.config.max_body + 1024:
            # Chunked framing adds a few bytes; the payload is checked exactly when it is whole.
            self._too_large(exchange, exchange.held_size)
        elif exchange.held_size > PIPELINE_HIGH_WATER:
            self.pauser.pause("hooks")

    def _too_large(self, exchange: Exchange, size: int) -> None:
        head = exchange.head
        self._refuse(
            413,
            f"request body of {size} bytes exceeds the {exchange.plan.config.max_body}-byte "
            f"limit for hooks (max_body) on {head.method.decode()} {_text(head.target)} "
            f"(endpoint {exchange.plan.endpoints})",
        )

    def _run_pre_hooks(self, exchange: Exchange) -> None:
        head = exchange.head
        body_text = None
        if exchange.buffer_json:
            raw = b"".join(exchange.held)
            payload = decode_chunked(raw) if head.body_kind is BodyKind.CHUNKED else raw
            if len(payload) > exchange.plan.config.max_body:
                self._too_large(exchange, len(payload))
                return
            # The daemon's JSON decoder reads a byte that is not UTF-8 as U+FFFD, and so do the
            # hooks; unless they change the body, the original bytes are what is forwarded.
            body_text = payload.decode("utf-8", "replace")
        request = ClientRequest(head.method.decode("latin-1"), _text(head.target), body_text)
        exchange.hooked_request = request
        adapters = self.factory.hooks.adapters
        exchange.call_id = adapters.new_call_id()
        done = adapters.run_pre(exchange.plan.pre, request, exchange.call_id)
        done.addCallbacks(self._pre_hooks_done, self._hooks_failed,
                          callbackArgs=(exchange, request), errbackArgs=(exchange,))

    def _pre_hooks_done(
        self, changed: ClientRequest, exchange: Exchange, sent: ClientRequest
    ) -> None:
        if exchange is not self.exchange or self.closing:
            return
        head = exchange.head
        exchange.hooked_request = changed
        held, exchange.held = exchange.held, None
        if changed == sent:
            out = [head.raw, *held]
        else:
            method, target = changed.method.encode("latin-1"), changed.request.encode("latin-1")
            if exchange.buffer_json or (head.body_kind is BodyKind.NONE and changed.body):
                body = (changed.body or "").encode("utf-8")
                headers = head.headers
                if head.body_kind is BodyKind.NONE and head.header(b"content-type") is None:
                    headers = [*headers, (b"Content-Type", b"application/json")]
                out = [build_request_head(method, target, headers, len(body)), body]
            else:
                if changed.body != sent.body:
                    log.warning("adapters changed the body of %s %s, which is not JSON: "
                                "it is passed on unchanged", changed.method, changed.request)
                out = [build_request_head(method, target, head.headers, None), *held]
        for data in out:
            self._to_daemon(data)
        self.pauser.resume("hooks")

    def _hooks_failed(self, failure: Failure, exchange: Exchange) -> None:
        if exchange is not self.exchange or self.closing:
            return
        if failure.check(HookError):
            status, message = failure.value.status, failure.value.message
        else:
            log.error("hook chain failed: %s", failure.getTraceback())
            status, message = 502, f"calling adapters failed: {failure.getErrorMessage()}"
        if not exchange.request_done or exchange.forwarded:
            self._refuse(status, message)
            return
        # The whole request was read and no answer was sent yet: the connection stays usable
        # for the client's next request.
        exchange.held = None
        exchange.forwarded = True
        send(self.transport, error_response(status, message, close=False))
        exchange.response_done = True
        self.pauser.resume("hooks")
        self._finish_exchange()

    def _to_daemon(self, data: bytes) -> None:
        daemon = self.daemon
        if daemon is not None and not self.pending:
            send(daemon.transport, data)
            return
        self.pending.append(data)
        if daemon is None and self.connecting is None:
            self._connect()

    def _connect(self) -> None:
        self.pauser.pause("connecting")
        self.connecting = connectProtocol(self.factory.upstream_endpoint, DaemonConnection(self))
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, daemon: DaemonConnection) -> None:
        self.connecting = None
        if self.closing or self.transport.disconnected:
            daemon.transport.loseConnection()
            return
        self.daemon = daemon
        daemon.transport.registerProducer(self.pauser, True)
        self.transport.registerProducer(daemon.pauser, True)
        pending, self.pending = self.pending, []
        daemon.transport.writeSequence(pending)
        if self.eof_forwarded:
            daemon.transport.loseWriteConnection()
        self.pauser.resume("connecting")

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        self.pending = []
        reason = failure.getErrorMessage()
        log.warning("cannot reach the Docker daemon at %s: %s", self.factory.upstream, reason)
        self._refuse(502, f"cannot reach the Docker daemon at {self.factory.upstream}: {reason}")

    def readConnectionLost(self) -> None:  # noqa: N802
        self.client_eof = True
        self._forward_eof()

    def _forward_eof(self) -> None:
        """Pass the client's end of input on to the daemon once everything before it has gone.

        The daemon hears the client's half-close as it would direct: on a hijacked connection
        that is the end of stdin (``echo hi | docker run -i``); during a response it is how
        dockerd learns that nobody reads an ``events`` or ``logs -f`` stream any more.
        """
        if not self.client_eof or self.eof_forwarded or self.closing:
            return
        if self.raw:
            self.eof_forwarded = True
            self.daemon.transport.loseWriteConnection()
            if self.daemon_eof_seen:
                self._close()
        elif self.reader.buffered:
            return  # pipelined requests are still to be sent first
        elif self.exchange is None:
            self._close()
        else:
            self.eof_forwarded = True
            if self.daemon is not None:
                self.daemon.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self.closing = True
        self.factory.connections.discard(self)
        if self.daemon is not None:
            self.daemon.transport.loseConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    # Daemon side

    def daemon_data(self, data: bytes) -> None:
        """Bytes from the daemon: forward them, watching for the end of the response."""
        if self.raw:
            send(self.transport, data)
            return
        exchange = self.exchange
        if exchange is None or exchange.response_done:
            log.warning("the Docker daemon sent %d bytes nobody asked for; closing", len(data))
            self._close()
            return
        response = exchange.response
        had_head = response.head is not None
        try:
            response.feed(data)
        except FramingError as exc:
            if exchange.forwarded:
                self.transport.abortConnection()
            else:
                self._refuse(exc.status, str(exc))
            return
        if exchange.collect:
            self._collect(exchange, data)
            return
        exchange.forwarded = True
        send(self.transport, data)
        # A 101 switches protocols whatever the reader (a framing-only one never has a head);
        # a legacy raw stream is a hijack only where the request could be one.
        if response.upgraded or (
            not had_head and response.head is not None and exchange.head.may_hijack
            and response.hijacked
        ):
            self._hijack()
        elif response.complete:
            exchange.response_done = True
            if exchange.request_done:
                self._finish_exchange()

    def _collect(self, exchange: Exchange, data: bytes) -> None:
        """Hold a response for post-hooks; let it through instead if it turns out to be one
        they cannot see (a hijack, a body that is neither JSON nor text)."""
        response = exchange.response
        exchange.response_raw.append(data)
        head = response.head
        if head is None:
            return
        if response.upgraded or response.hijacked or not (
            is_text(head.content_type) or response.complete and not response.body
        ):
            exchange.collect = False
            raw, exchange.response_raw = exchange.response_raw, []
            exchange.forwarded = True
            for piece in raw:
                send(self.transport, piece)
            if response.upgraded or (exchange.head.may_hijack and response.hijacked):
                self._hijack()
            elif response.complete:
                exchange.response_done = True
                if exchange.request_done:
                    self._finish_exchange()
            return
        if len(response.body) > exchange.plan.config.max_body:
            self._refuse(502, f"the daemon's response to {exchange.head.method.decode()} "
                              f"{_text(exchange.head.target)} exceeds the "
                              f"{exchange.plan.config.max_body}-byte limit for post-hooks "
                              f"(max_body) on endpoint {exchange.plan.endpoints}")
            return
        if not response.complete:
            return
        head_only = exchange.head.method == b"HEAD"
        content_type = head.header(b"content-type")
        sent = ServerResponse(
            None if content_type is None else content_type.decode("latin-1"),
            response.body.decode("utf-8", "replace"),
            head.status,
        )
        request = exchange.hooked_request or ClientRequest(
            exchange.head.method.decode("latin-1"), _text(exchange.head.target), None)
        self.pauser.pause("hooks")
        done = self.factory.hooks.adapters.run_post(exchange.plan.post, request, sent,
                                                    exchange.call_id)
        done.addCallbacks(self._post_hooks_done, self._hooks_failed,
                          callbackArgs=(exchange, sent, head_only), errbackArgs=(exchange,))

    def _post_hooks_done(
        self, changed: ServerResponse, exchange: Exchange, sent: ServerResponse, head_only: bool
    ) -> None:
        if exchange is not self.exchange or self.closing:
            return
        raw, exchange.response_raw = exchange.response_raw, []
        if changed == sent:
            out = b"".join(raw)
        else:
            head = exchange.response.head
            out = build_response(
                changed.code, head.headers,
                None if changed.content_type is None else changed.content_type.encode("latin-1"),
                (changed.body or "").encode("utf-8"), head_only=head_only,
            )
        exchange.forwarded = True
        exchange.collect = False
        send(self.transport, out)
        exchange.response_done = True
        self.pauser.resume("hooks")
        if exchange.request_done:
            self._finish_exchange()

    def _hijack(self) -> None:
        """The daemon took the connection over: from now on, bytes flow raw both ways."""
        self.raw = True
        self.exchange = None
        rest = self.reader.take_rest()
        if rest:
            self._to_daemon(rest)
        self.pauser.resume("pipeline")
        self.eof_forwarded = False
        self._forward_eof()

    def _finish_exchange(self) -> None:
        self.exchange = None
        if self.closing:
            return
        pace = self.pace
        # Pipelined requests count too: the next one then starts right after this answer.
        quick = pace is not None and pace.answered(self.factory.reactor.seconds())
        try:
            events = self.reader.next_request()
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return
        if events:
            self._handle(events)
            return
        if self.pauser.reasons:
            self.pauser.resume("pipeline")
        if self.draining:
            self._close()
        elif self.client_eof:
            self._forward_eof()
        elif quick:
            self.factory.expect_soon()  # a back-to-back client's next request

    def daemon_eof(self, daemon: DaemonConnection) -> None:
        """The daemon closed its side of the connection."""
        if daemon is not self.daemon:
            return
        self.daemon_eof_seen = True
        if self.raw:
            self.transport.loseWriteConnection()
            if self.client_eof:
                self._close()
            return
        daemon.transport.loseConnection()

    def daemon_lost(self, daemon: DaemonConnection) -> None:
        """The daemon connection is gone; end the client's exchange accordingly."""
        if daemon is not self.daemon:
            return
        self.daemon = None
        if not self.transport.disconnected:
            self.transport.unregisterProducer()
        self.pauser.resume("flow")
        if self.closing:
            return
        if self.raw:
            self._close()
            return
        exchange = self.exchange
        if exchange is None:
            # The daemon ended the connection between requests (after "Connection: close", or
            # idle): the client sees its connection end, exactly as it would direct.
            self._close()
            return
        if (exchange.collect and not exchange.forwarded and exchange.response.head is not None
                and exchange.response.end_of_stream()):
            # A response whose body ends with the connection (an HTTP/1.0 client's): complete
            # now, so post-hooks see it; the client's connection ends after it, as it would.
            self.draining = True
            self._collect(exchange, b"")
            return
        response = exchange.response
        if not exchange.forwarded or (response.head is None and response is not self.framing):
            # Nothing, or only an interim 100 Continue, reached the client (the connection's
            # shared reader, used for bodiless requests, never sees a head).
            self._refuse(
                502,
                f"the Docker daemon at {self.factory.upstream} closed the connection "
                "without answering",
            )
        else:
            # Either the end of a response delimited by the connection's end, or a response cut
            # short. Closing (not resetting) delivers what did arrive; a client that was owed
            # more sees the short body, as it would direct.
            self._close()

    # Ending

    def _refuse(self, status: int, message: str) -> None:
        """Answer with a Docker-style error and close: nothing more is read from this client."""
        self.closing = True
        self.pauser.pause("closing")
        if not self.transport.disconnected:
            self.transport.write(error_response(status, message))
        self._close()

    def _close(self) -> None:
        self.closing = True
        self.transport.loseConnection()
        if self.daemon is not None:
            self.daemon.transport.loseConnection()

    def shutdown(self) -> None:
        """Close once idle; called when the proxy stops."""
        self.draining = True
        if self.raw:
            return
        if self.exchange is None and not self.reader.buffered:
            self._close()

    def cut_short(self, grace: float) -> None:
        """The shutdown grace has run out while this connection was still busy.

        A request still waiting for its answer is told so with a Docker-style error, so that
        its client knows it may not have taken effect rather than seeing a bare disconnect;
        anything else (a response half sent, a hijacked stream) can only be cut.
        """
        exchange = self.exchange
        if self.closing or self.transport.disconnected:
            return
        if not self.raw and exchange is not None and not exchange.forwarded:
            head = exchange.head
            self._refuse(
                503,
                f"Powerstrip is stopping: the Docker daemon at {self.factory.upstream} had not "
                f"answered {head.method.decode('latin-1')} {_text(head.target)} within the "
                f"{grace:g} s shutdown grace",
            )
        else:
            self.transport.abortConnection()
            if self.daemon is not None:
                self.daemon.transport.abortConnection()


class ProxyFactory(Factory):
    """Builds a ClientConnection per accepted client; all of them share one upstream."""

    protocol = ClientConnection
    noisy = False

    def __init__(self, reactor: object, upstream: Address, hooks: LiveConfig | None = None) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.hooks = hooks
        self.upstream_endpoint = clientFromString(reactor, client_description(upstream))
        self.connections: set[ClientConnection] = set()
        #: Tells the reactor an answer is due soon, so that it busy-polls for it (see
        #: powerstrip.reactor); with a reactor that cannot, connections do not keep track.
        self.expect_soon: Callable[[], None] = getattr(reactor, "expect_soon", _nothing)
        self.busy_poll: float = getattr(reactor, "busy_poll", 0.0)

    def buildProtocol(self, addr: object) -> ClientConnection:  # noqa: N802
        protocol = ClientConnection()
        protocol.factory = self
        return protocol

    def shutdown(self, grace: float) -> defer.Deferred:
        """Let open requests finish for up to ``grace`` seconds, then end what is left: a
        request still waiting for its answer gets a 503, anything else is cut."""
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


def _text(target: bytes) -> str:
    return target.decode("latin-1")


