"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` and the live trace (``/trace``),
apart from the Docker API listeners, as twisted.web resources."""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

from twisted.internet import defer, protocol
from twisted.web import resource, server

from powerstrip.hooks.live import LiveConfig
from powerstrip.observe.observer import Observer
from powerstrip.observe.prometheus import CONTENT_TYPE, registry_for, render
from powerstrip.proxy.addresses import Address, upstream_endpoint

log = logging.getLogger(__name__)

#: How long ``/readyz`` waits for the daemon's ping and for each adapter to accept.
READY_TIMEOUT = 2.0
#: A comment line sent on a quiet event stream, so that proxies and browsers keep it open.
HEARTBEAT = 15.0


def _json(request: server.Request, status: int, document: Any) -> bytes:
    body = json.dumps(document).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


class _Leaf(resource.Resource):
    isLeaf = True


class Metrics(_Leaf):
    """``GET /metrics``: the Prometheus text format."""

    def __init__(self, observer: Observer) -> None:
        super().__init__()
        self.registry = registry_for(observer.stats)

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 - twisted.web's name
        """The metrics as they are now."""
        body = render(self.registry)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        return body


class Health(_Leaf):
    """``GET /healthz``: 200 for as long as the process serves."""

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        """Always 200: answering is the proof."""
        return _json(request, 200, {"status": "serving"})


class _Ping(protocol.Protocol):
    """Sends the daemon ``GET /_ping`` and reads its status line."""

    def __init__(self) -> None:
        self.done: defer.Deferred[str] = defer.Deferred()
        self.data = b""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if b"\r\n" in self.data and not self.done.called:
            self.done.callback(self.data.split(b"\r\n", 1)[0].decode("latin-1"))
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(ConnectionError("closed without answering"))


class _Once(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: object) -> protocol.Protocol:  # noqa: N802
        return self.proto


class Ready(_Leaf):
    """``GET /readyz``: 200 when the daemon answers ``_ping`` and every adapter of the running
    configuration accepts a connection; else 503 naming what is down."""

    def __init__(self, reactor: object, upstream: Address, hooks: LiveConfig | None) -> None:
        super().__init__()
        self.reactor = reactor
        self.upstream = upstream
        self.hooks = hooks

    def render_GET(self, request: server.Request) -> Any:  # noqa: N802
        """Check everything at once, answer when all checks are in."""
        checks = {"daemon": self._daemon()}
        if self.hooks is not None:
            for name, spec in self.hooks.config.adapters.items():
                checks[f"adapter {name}"] = self._adapter(spec)

        def answer(results: list[tuple[bool, Any]]) -> None:
            down = {name: str(getattr(value, "value", value))
                    for name, (ok, value) in zip(checks, results, strict=True)
                    if not ok or value is not None}
            if request._disconnected:
                return
            if down:
                request.write(_json(request, 503, {
                    "message": "not ready: " + "; ".join(f"{k}: {v}" for k, v in down.items()),
                    "down": down}))
            else:
                request.write(_json(request, 200, {"status": "ready",
                                                   "checked": list(checks)}))
            request.finish()

        defer.DeferredList(list(checks.values()), consumeErrors=True).addCallback(answer)
        return server.NOT_DONE_YET

    def _daemon(self) -> defer.Deferred:
        ping = _Ping()
        connecting = upstream_endpoint(self.reactor, self.upstream).connect(_Once(ping))
        connecting.addTimeout(READY_TIMEOUT, self.reactor)

        def connected(_: object) -> defer.Deferred:
            return ping.done.addTimeout(READY_TIMEOUT, self.reactor)

        def judged(status_line: str) -> str | None:
            if " 200 " in f"{status_line} ":
                return None
            return f"{self.upstream} answered {status_line!r} to _ping"

        def failed(failure: Any) -> str:
            return f"{self.upstream} unreachable: {failure.getErrorMessage() or 'timed out'}"

        return connecting.addCallback(connected).addCallbacks(judged, failed)

    def _adapter(self, spec: Any) -> defer.Deferred:
        try:
            route = self.hooks.adapters._route(spec)
        except (LookupError, ValueError) as exc:  # a Docker plugin not found by its name
            return defer.succeed(f"{spec.url}: {exc}")
        connecting = route.endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        connecting.addTimeout(READY_TIMEOUT, self.reactor)

        def connected(proto: protocol.Protocol) -> None:
            proto.transport.loseConnection()

        def failed(failure: Any) -> str:
            return f"{spec.url} unreachable: {failure.getErrorMessage() or 'timed out'}"

        return connecting.addCallbacks(connected, failed)


class TracePage(_Leaf):
    """``GET /trace``: the live trace page; ``/trace/events`` its event stream (server-sent
    events), ``/trace/recent`` the requests kept, as JSON."""

    def __init__(self, reactor: object, observer: Observer) -> None:
        super().__init__()
        self.reactor = reactor
        self.observer = observer

    def render_GET(self, request: server.Request) -> Any:  # noqa: N802
        """The page, the stream or the snapshot, by path."""
        path = request.path.rstrip(b"/")
        trace = self.observer.trace
        if trace is None:
            return _json(request, 404, {"message": "the trace is off (--trace-size 0)"})
        if path == b"/trace/recent":
            return _json(request, 200, list(trace.events))
        if path == b"/trace/events":
            return self._stream(request)
        if path != b"/trace":
            return _json(request, 404, {"message": f"no such page {request.path.decode()}"})
        page = resources.files("powerstrip.observe").joinpath("static/trace.html").read_bytes()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return page

    def _stream(self, request: server.Request) -> Any:
        trace = self.observer.trace
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        # Something at once: a browser takes the stream for open only when bytes arrive, and
        # with nothing kept and nothing happening that would be the first heartbeat. The
        # retry field sets how soon it connects again after losing the stream.
        request.write(b"retry: 2000\n\n")
        # The requests kept so far, then each new one as it ends.
        for event in list(trace.events):
            request.write(_event(event))

        def send(event: dict[str, Any]) -> None:
            request.write(_event(event))

        handle = trace.watch(send)
        beat: list[Any] = []

        def heartbeat() -> None:
            request.write(b": keep-alive\n\n")
            beat[:] = [self.reactor.callLater(HEARTBEAT, heartbeat)]

        beat.append(self.reactor.callLater(HEARTBEAT, heartbeat))

        def gone(_: object) -> None:
            trace.unwatch(handle)
            if beat[0].active():
                beat[0].cancel()

        request.notifyFinish().addBoth(gone)
        return server.NOT_DONE_YET


def _event(event: dict[str, Any]) -> bytes:
    return b"event: request\ndata: " + json.dumps(event).encode() + b"\n\n"


class Admin(resource.Resource):
    """The admin site's root."""

    def __init__(self, reactor: object, observer: Observer, upstream: Address,
                 hooks: LiveConfig | None) -> None:
        super().__init__()
        self.putChild(b"metrics", Metrics(observer))
        self.putChild(b"healthz", Health())
        self.putChild(b"readyz", Ready(reactor, upstream, hooks))
        self.putChild(b"trace", TracePage(reactor, observer))

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        """An index of the pages."""
        return _json(request, 200, {"pages": ["/metrics", "/healthz", "/readyz", "/trace"]})


def admin_site(reactor: object, observer: Observer, upstream: Address,
               hooks: LiveConfig | None) -> server.Site:
    """The admin listener's site."""
    site = server.Site(Admin(reactor, observer, upstream, hooks))
    site.noisy = False
    site.log = lambda request: None  # scrapes every few seconds would flood the log
    return site
