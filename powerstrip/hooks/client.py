"""Calling adapters: hook chains over pooled keep-alive HTTP, with timeouts and clear failures.

This is the Twisted side of hooks. What to call is decided from the configuration and the
matcher (pure code); the wire format is ``powerstrip.hooks.wire``. Every way an adapter call can end
maps to one outcome: an answer, a refusal (the adapter's own non-2xx status), or a failure
(502 unreachable or bad answer, 504 timeout) whose message names the adapter, the request, the
endpoint and the cause.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httptools
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from powerstrip.core.identity import UNKNOWN, Client
from powerstrip.hooks.config import AUTHZ_RESPONSE_PATH, AdapterSpec, AdapterTarget
from powerstrip.hooks.plans import Hook
from powerstrip.hooks.wire import (
    AnswerError,
    ClientRequest,
    ServerResponse,
    client_to_wire,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
    refusal_message,
)
from powerstrip.observe.observer import Observer
from powerstrip.observe.records import HookRecord, changed_fields
from powerstrip.plugins import wire as plugin_wire
from powerstrip.plugins.discovery import PluginNotFound, find_plugin

log = logging.getLogger(__name__)

#: An adapter's answer larger than this is a bad answer: it can only be the request or response
#: it was sent, which are themselves limited by ``max_body``.
ANSWER_SLACK = 64 * 1024

#: The request header naming the client request a hook call is made for (see ``post``).
CALL_HEADER = b"Powerstrip-Call"

#: Docker's first wait before calling a plugin it could not connect to again; each next wait
#: doubles (``pkg/plugins/client.go``), within the adapter's timeout (30 s by default, Docker's).
PLUGIN_FIRST_BACKOFF = 1.0


class _Refused(Exception):
    """A plugin's answer that denies (``Allow: false``), with its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HookError(Exception):
    """A hook chain ended without an answer to pass on; ``status`` and ``message`` are what the
    client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: Idle keep-alive connections kept per adapter. Connections beyond it are closed once their
#: call is answered. A proxy under N concurrent hooked requests holds up to N calls to an adapter
#: at once: with too few kept (Twisted's pool kept 8), nearly every call past the eighth opened a
#: fresh connection and left a TIME_WAIT behind (100 concurrent clients: 3,609 connections for
#: 5,000 calls). Each kept connection is a file descriptor, hence a bound.
MAX_IDLE_PER_ADAPTER = 128

#: Seconds an idle connection is kept before it is closed.
IDLE_TIMEOUT = 240.0


class AnswerLost(Exception):
    """The connection to an adapter ended before its answer was complete."""


class _Connection(protocol.Protocol):
    """One keep-alive HTTP/1.1 connection to an adapter, carrying one call at a time.

    A lean client rather than treq on Twisted's ``Agent``: a hook call is one small POST and
    one small answer, and Agent's machinery (an ``IBodyProducer``, a ``Request`` object, a
    ``Response`` with its own body-delivery protocol, the pool's per-connection state machine,
    treq's wrappers on top) was most of what a null hook cost the proxy: about 0.45 ms of CPU
    per call more than this client, measured on the 2-core development machine (see
    docs/performance.md). Here a call is one write of head and body, llhttp (httptools, which
    the proxy already parses with) reading the answer, and a Deferred fired when it is whole.
    """

    def __init__(self, client: AdapterClient, key: object) -> None:
        self.client = client
        self.key = key
        self.waiting: defer.Deferred | None = None
        self.idle_timer: object | None = None
        self.lost = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        # The head and body leave in one write, but an answer read with Nagle's algorithm on
        # can still wait for a delayed ACK: send at once. Under TLS the TCP transport is the
        # TLS protocol's own transport.
        transport = self.transport
        while transport is not None:
            setter = getattr(transport, "setTcpNoDelay", None)
            if setter is not None:
                setter(True)
                break
            transport = getattr(transport, "transport", None)

    def request(self, data: bytes, limit: int) -> defer.Deferred:
        """Send one call (its head and body, ``data``); the Deferred fires with ``(status,
        body)`` once the whole answer is in, or fails (AnswerError for an answer over
        ``limit`` bytes or not HTTP, AnswerLost when the connection ends first). Cancelling it
        aborts the connection."""
        self.waiting = defer.Deferred(lambda _: self.transport.abortConnection())
        self.parser = httptools.HttpResponseParser(self)
        self.limit = limit
        self.size = 0
        self.body: list[bytes] = []
        self.status = 0
        self.framed = False
        self.headers_done = False
        self.complete = False
        self.error: Exception | None = None
        self.transport.write(data)
        return self.waiting

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """Note whether the answer says where its body ends (else it ends at the close)."""
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        """The status is known."""
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        """Collect the body, within the limit."""
        self.size += len(data)
        if self.size > self.limit:
            self.error = AnswerError(f"answer larger than {self.limit} bytes")
            raise self.error
        self.body.append(data)

    def on_message_complete(self) -> None:
        """The answer is whole; whether the connection may carry another call is known only
        now (llhttp forgets it once the message is done)."""
        self.complete = True
        self.keep = self.parser.should_keep_alive() and self.status >= 200

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.waiting is None:
            # Bytes nobody asked for: the connection cannot be trusted with the next call.
            self.transport.abortConnection()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = self.error or AnswerError(f"not an HTTP/1.1 answer ({exc})")
            self._finish(Failure(error))
            self.transport.abortConnection()
            return
        if self.complete:
            # A keep-alive connection goes back to the pool before the caller hears of the
            # answer, so that the chain's next call (often to the same adapter) reuses it.
            if self.keep:
                self.client._release(self)
            else:
                self.transport.loseConnection()
            self._finish((self.status, b"".join(self.body)))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.lost = True
        self.client._forget(self)
        if self.waiting is None:
            return
        if self.headers_done and not self.framed and self.error is None:
            # An answer without Content-Length or chunking ends where the connection does.
            self._finish((self.status, b"".join(self.body)))
            return
        cause = reason.getErrorMessage() if reason is not None else "connection lost"
        self._finish(Failure(AnswerLost(
            f"the connection closed before the answer was complete ({cause})")))

    def _finish(self, result: object) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None and not waiting.called:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)


class _Factory(protocol.Factory):
    """Makes the connections to one adapter."""

    noisy = False

    def __init__(self, client: AdapterClient, key: object) -> None:
        self.client = client
        self.key = key

    def buildProtocol(self, addr: object) -> _Connection:  # noqa: N802 - Twisted's name
        return _Connection(self.client, self.key)


class _Route:
    """How to reach one adapter target: an endpoint and the head every call to it begins with.

    Keyed by the target, so that the idle connections of one adapter are never handed to
    another (a unix socket's connections by its path, TCP's by scheme, host and port).
    """

    def __init__(self, reactor: object, target: AdapterTarget,
                 content_type: str = "application/json") -> None:
        if target.kind == "unix":
            self.key: object = ("unix", target.socket_path)
            self.endpoint = UNIXClientEndpoint(reactor, target.socket_path)
            host = "localhost"
        else:
            parts = urlsplit(target.url)
            port = parts.port or (443 if target.kind == "https" else 80)
            self.key = (target.kind, parts.hostname, port)
            endpoint = HostnameEndpoint(reactor, parts.hostname, port)
            if target.kind == "https":
                endpoint = wrapClientTLS(optionsForClientTLS(parts.hostname), endpoint)
            self.endpoint = endpoint
            host = parts.netloc.rpartition("@")[2]
        self.target = target
        self.head = (f"POST {target.http_path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: {content_type}\r\n").encode("ascii")


class AdapterClient:
    """Posts hook calls to adapters over a shared pool of persistent connections."""

    def __init__(self, reactor: object, max_body: int = 4 * 1024 * 1024) -> None:
        self.reactor = reactor
        self.max_body = max_body
        self._routes: dict[AdapterTarget, _Route] = {}
        #: The routes of each AuthZ plugin adapter once activated (``_plugin_routes``).
        self._activated: dict[tuple[str, AdapterTarget], tuple[_Route, _Route]] = {}
        #: Requests waiting for an activation in progress, by adapter.
        self._activating: dict[tuple[str, AdapterTarget], list[defer.Deferred]] = {}
        self._idle: dict[object, list[_Connection]] = {}
        self._factories: dict[object, _Factory] = {}
        # Unique across proxies and restarts, short enough to read in a log line.
        self._call_prefix = os.urandom(4).hex()
        self._calls = itertools.count(1)
        #: Told of every hook call's outcome and time (None: nobody counts them).
        self.observer: Observer | None = None

    def _route(self, adapter: AdapterSpec, target: AdapterTarget | None = None) -> _Route:
        target = target or adapter.target
        if target.kind == "plugin":
            target = _plugin_target(find_plugin(adapter.plugin_name or ""), target.http_path)
        route = self._routes.get(target)
        if route is None:
            kind = plugin_wire.CONTENT_TYPE if adapter.plugin else "application/json"
            route = self._routes[target] = _Route(self.reactor, target, kind)
        return route

    def _plugin_routes(self, adapter: AdapterSpec) -> defer.Deferred:
        """The routes of an AuthZ plugin adapter, (requests, responses), once it is found and
        activated (``Plugin.Activate``, its ``Implements`` naming ``authz``), as dockerd does
        before its first call. Kept while the plugin answers; a failure is not kept, so the
        next request looks for the plugin again."""
        key = (adapter.name, adapter.target)
        ready = self._activated.get(key)
        if ready is not None:
            return defer.succeed(ready)
        waiting = self._activating.get(key)
        if waiting is not None:
            # One activation at a time, as dockerd: the requests that come meanwhile wait for it.
            waiter: defer.Deferred = defer.Deferred()
            waiting.append(waiter)
            return waiter
        self._activating[key] = []

        def settled(result: Any) -> Any:
            for waiter in self._activating.pop(key, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return self._activate(adapter, key).addBoth(settled)

    def _activate(self, adapter: AdapterSpec,
                  key: tuple[str, AdapterTarget]) -> defer.Deferred:
        try:
            pre = self._route(adapter)
        except (PluginNotFound, ValueError) as exc:
            return defer.fail(HookError(502, f"adapter {adapter.name} ({adapter.url}): {exc}"))
        target = pre.target
        post = self._route(adapter, AdapterTarget(
            target.kind, target.url.replace(target.http_path, AUTHZ_RESPONSE_PATH),
            target.socket_path, AUTHZ_RESPONSE_PATH))
        activate = _Route(self.reactor, AdapterTarget(
            target.kind, target.url.replace(target.http_path, plugin_wire.ACTIVATE),
            target.socket_path, plugin_wire.ACTIVATE), plugin_wire.CONTENT_TYPE)
        data = activate.head + b"Content-Length: 4\r\n\r\nnull"
        deadline = self.reactor.seconds() + adapter.timeout
        call = self._send_retrying(activate, data, ANSWER_SLACK, deadline)

        def activated(result: tuple[int, bytes]) -> tuple[_Route, _Route]:
            status, body = result
            where = f"adapter {adapter.name} ({adapter.url})"
            if status != 200:
                raise HookError(502, f"{where}: Plugin.Activate answered {status}: "
                                     f"{refusal_message(body)}")
            try:
                implements = plugin_wire.read_object(body, "Plugin.Activate").get("Implements")
            except plugin_wire.PluginCallError as exc:
                raise HookError(502, f"{where}: Plugin.Activate: {exc}") from None
            if not isinstance(implements, list) or plugin_wire.AUTHZ not in implements:
                raise HookError(502, f"{where} does not implement authz (it implements "
                                     f"{implements!r})")
            log.info("adapter %s: plugin activated at %s", adapter.name, target.url)
            self._activated[key] = (pre, post)
            return pre, post

        def failed(failure: Failure) -> None:
            if failure.check(HookError):
                return failure
            raise HookError(502, f"adapter {adapter.name} ({adapter.url}) cannot be activated: "
                                 f"{_reason(failure.value)}")

        return call.addCallbacks(activated, failed)

    def _send_retrying(self, route: _Route, data: bytes, limit: int,
                       deadline: float) -> defer.Deferred:
        """``_send``, again after Docker's backoff while the plugin cannot be connected to,
        until ``deadline`` (a plugin restarting comes back within it)."""
        current: list[Any] = []

        def cancel(_: defer.Deferred) -> None:
            if current:
                current[0].cancel()

        result: defer.Deferred = defer.Deferred(cancel)

        def attempt(wait: float) -> None:
            sending = self._send(route, data, limit)
            current[:] = [sending]

            def failed(failure: Failure) -> None:
                if result.called:
                    return
                if failure.check(error.ConnectError) and \
                        self.reactor.seconds() + wait < deadline:
                    log.warning("plugin at %s: cannot connect (%s); again in %g s",
                                route.key, _reason(failure.value), wait)
                    current[:] = [self.reactor.callLater(wait, attempt, wait * 2)]
                    return
                result.errback(failure)

            def sent(answer: object) -> None:
                if not result.called:
                    result.callback(answer)

            sending.addCallbacks(sent, failed)

        attempt(PLUGIN_FIRST_BACKOFF)
        return result

    def _send(self, route: _Route, data: bytes, limit: int) -> defer.Deferred:
        """One call on an idle connection to the route's adapter, else on a new one."""
        idle = self._idle.get(route.key)
        while idle:
            connection = idle.pop()
            if connection.idle_timer is not None and connection.idle_timer.active():
                connection.idle_timer.cancel()
            connection.idle_timer = None
            if not connection.lost:
                return connection.request(data, limit)
        factory = self._factories.get(route.key)
        if factory is None:
            factory = self._factories[route.key] = _Factory(self, route.key)
        connecting = route.endpoint.connect(factory)
        sent: list[defer.Deferred] = []

        def cancel(_: defer.Deferred) -> None:
            if sent:
                sent[0].cancel()
            else:
                connecting.cancel()

        result = defer.Deferred(cancel)

        def connected(connection: _Connection) -> None:
            call = connection.request(data, limit)
            sent.append(call)
            call.chainDeferred(result)

        def failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)

        connecting.addCallbacks(connected, failed)
        return result

    def _release(self, connection: _Connection) -> None:
        """Keep an answered connection for the next call, up to the bound."""
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE_PER_ADAPTER:
            connection.transport.loseConnection()
            return
        connection.idle_timer = self.reactor.callLater(
            IDLE_TIMEOUT, connection.transport.loseConnection)
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        """A connection that ended is no longer idle."""
        if connection.idle_timer is not None and connection.idle_timer.active():
            connection.idle_timer.cancel()
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def post(
        self, hook: Hook, payload: bytes, what: str, call_id: str | None = None,
        outcome: list | None = None, route: _Route | None = None,
    ) -> defer.Deferred:
        """POST ``payload`` to the hook's adapter; the Deferred fires with the answer's body on
        a 2xx.

        It fails with HookError for a refusal (the adapter's status) and for any failure
        (502/504). ``what`` describes the request for messages, e.g. ``pre-hook for POST
        /containers/create``. ``call_id`` (sent as the ``Powerstrip-Call`` header) is the same
        for every hook call made for one client request, so an adapter seen twice in a chain
        can tell what the hooks between its two calls changed. ``outcome``, when given, gets
        how the call ended (a ``stats.HOOK_OUTCOMES`` word) and its seconds appended.
        """
        # Plain callbacks rather than inlineCallbacks: a generator and its Deferred plumbing
        # per call were a third of this client's own time.
        adapter = hook.adapter
        started = time.monotonic()
        route = route or self._route(adapter)
        head = route.head
        if call_id is not None:
            head += CALL_HEADER + b": " + call_id.encode("ascii") + b"\r\n"
        data = head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        limit = len(payload) + self.max_body + ANSWER_SLACK
        if adapter.plugin:
            # As dockerd calls plugins: a plugin that cannot be connected to (restarting, its
            # socket not there yet) is tried again, within the adapter's timeout.
            call = self._send_retrying(route, data, limit,
                                       self.reactor.seconds() + adapter.timeout)
        else:
            call = self._send(route, data, limit)
        # Cancelling surfaces as whatever the connection was doing at that moment, so the
        # timer itself records that it fired.
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            call.cancel()

        timer = self.reactor.callLater(adapter.timeout, expire)

        def done(ended: str, word: str = "ok") -> None:
            if timer.active():
                timer.cancel()
            seconds = time.monotonic() - started
            if outcome is not None:
                outcome.append((word, seconds))
            log.info("adapter %s %s (endpoint \"%s\"): %s in %.1f ms", adapter.name, what,
                     hook.endpoint, ended, seconds * 1000)

        def answered(result: tuple[int, bytes]) -> bytes:
            status, body = result
            if adapter.plugin and status != 200:
                # Docker's convention: a plugin that fails answers {"Err": ...}; dockerd then
                # fails the request, and so does Powerstrip.
                done(f"error {status}", "bad_answer")
                try:
                    message = plugin_wire.read_authz_answer(body).error
                except plugin_wire.PluginCallError:
                    message = ""
                raise HookError(502, self._describe(
                    hook, what, f"plugin error {status}: {message or refusal_message(body)}"))
            if not 200 <= status < 300:
                done(f"refused {status}", "refused")
                message = refusal_message(body) or f"refused with status {status}"
                raise HookError(status, f"adapter {adapter.name} refused {what} "
                                        f"(endpoint \"{hook.endpoint}\"): {message}")
            done(str(status))
            return body

        def failed(failure: Failure) -> None:
            exc = failure.value
            if fired:
                done("timeout", "timeout")
                raise HookError(504, self._describe(
                    hook, what, f"timed out after {adapter.timeout:g} s"))
            if isinstance(exc, AnswerError):
                done("bad answer", "bad_answer")
                raise HookError(502, self._describe(hook, what, f"bad answer: {exc}"))
            done("unreachable", "unreachable")
            raise HookError(502, self._describe(hook, what, f"unreachable: {_reason(exc)}"))

        call.addCallbacks(answered, failed)
        return call

    @staticmethod
    def _describe(hook: Hook, what: str, cause: str) -> str:
        adapter = hook.adapter
        return (f"adapter {adapter.name} ({adapter.url}) {cause} on {what} "
                f"(endpoint \"{hook.endpoint}\")")

    def new_call_id(self) -> str:
        """A fresh identifier for the hook calls of one client request."""
        return f"{self._call_prefix}-{next(self._calls)}"

    def run_pre(
        self, hooks: Sequence[Hook], request: ClientRequest, call_id: str | None = None,
        client: Client = UNKNOWN, records: list[HookRecord] | None = None,
    ) -> defer.Deferred:
        """Run pre-hooks in order, each seeing what the one before returned; ``client`` is
        who sent the request, for adapters that speak version 2. ``records``, when given,
        gets a ``HookRecord`` of each call."""
        shown = _Shown(client)
        sender = _sender(client)

        def encode(hook: Hook, value: ClientRequest) -> bytes:
            adapter = hook.adapter
            if adapter.plugin:
                return _authz_payload(value, client)
            if adapter.protocol == 1:
                return pre_hook_call(value)
            return pre_hook_call(value, version=adapter.protocol, client=shown.wire(),
                                 credentials=adapter.credentials)

        def parse(hook: Hook, answer: bytes, value: ClientRequest) -> ClientRequest:
            adapter = hook.adapter
            if adapter.plugin:
                return _authz_verdict(answer, value)
            return parse_pre_hook_answer(answer, value, version=adapter.protocol,
                                         credentials=adapter.credentials)

        return self._chain(
            hooks, request, lambda r: f"pre-hook for {r.method} {r.request}{sender}",
            encode, parse, call_id, "pre", records,
        )

    def run_post(
        self,
        hooks: Sequence[Hook],
        request: ClientRequest,
        response: ServerResponse,
        call_id: str | None = None,
        client: Client = UNKNOWN,
        records: list[HookRecord] | None = None,
    ) -> defer.Deferred:
        """Run post-hooks in order, each seeing the response the one before returned."""
        what = f"post-hook for {request.method} {request.request}{_sender(client)}"
        shown = _Shown(client)

        def encode(hook: Hook, value: ServerResponse) -> bytes:
            adapter = hook.adapter
            if adapter.plugin:
                return _authz_payload(request, client, value)
            if adapter.protocol == 1:
                return post_hook_call(request, value)
            return post_hook_call(request, value, version=adapter.protocol,
                                  client=shown.wire(), credentials=adapter.credentials)

        def parse(hook: Hook, answer: bytes, value: ServerResponse) -> ServerResponse:
            adapter = hook.adapter
            if adapter.plugin:
                return _authz_verdict(answer, value)
            return parse_post_hook_answer(answer, value, version=adapter.protocol,
                                          credentials=adapter.credentials)

        return self._chain(hooks, response, lambda _: what, encode, parse, call_id, "post",
                           records)

    def _chain(
        self, hooks: Sequence[Hook], value: Any, describe: Callable[[Any], str],
        encode: Callable[[Hook, Any], bytes], parse: Callable[[Hook, bytes, Any], Any],
        call_id: str | None = None, phase: str = "pre",
        records: list[HookRecord] | None = None,
    ) -> defer.Deferred:
        if call_id is None:
            call_id = self.new_call_id()
        observer = self.observer
        payloads = observer is not None and records is not None and observer.payloads

        def step(value: object, index: int) -> object:
            if index == len(hooks):
                return value
            hook = hooks[index]
            what = describe(value)
            payload = encode(hook, value)
            # How the call ended and how long it took, from ``post``; a bad answer or a skip
            # is decided here, after it.
            ended: list[tuple[str, float]] = []

            def seen(word: str, new: object = None, answer: bytes | None = None,
                     message: str | None = None) -> None:
                if observer is None:
                    return
                seconds = ended[0][1] if ended else 0.0
                observer.stats.hook(hook.adapter.name, phase, word, seconds)
                if records is not None:
                    records.append(HookRecord(
                        hook.adapter.name, phase, word, seconds * 1000,
                        changed_fields(value, new) if new is not None else (), message,
                        _document(payload) if payloads else None,
                        _document(answer) if payloads and answer is not None else None))

            def parsed(answer: bytes) -> object:
                try:
                    new = parse(hook, answer, value)
                except _Refused as refusal:
                    if ended:
                        ended[0] = ("refused", ended[0][1])
                    adapter = hook.adapter
                    raise HookError(403, f"adapter {adapter.name} refused {what} (endpoint "
                                         f"\"{hook.endpoint}\"): authorization denied by plugin "
                                         f"{adapter.plugin_name or adapter.name}: "
                                         f"{refusal.message}") from None
                except AnswerError as exc:
                    if ended:
                        ended[0] = ("bad_answer", ended[0][1])
                    raise HookError(502, self._describe(
                        hook, what, f"bad answer: {exc}")) from None
                seen("ok", new, answer)
                return new

            def failed(failure: Failure) -> object:
                exc = failure.value
                message = exc.message if isinstance(exc, HookError) else str(exc)
                if (isinstance(exc, HookError) and exc.status in (502, 504)
                        and hook.adapter.on_error == "skip"):
                    log.warning("skipping adapter %s (on_error: skip): %s",
                                hook.adapter.name, exc.message)
                    seen("skipped", message=message)
                    return value
                seen(ended[0][0] if ended else "unreachable", message=message)
                return failure

            if hook.adapter.plugin:
                side = 0 if phase == "pre" else 1
                call = self._plugin_routes(hook.adapter).addCallback(
                    lambda routes: self.post(hook, payload, what, call_id, ended, routes[side]))
            else:
                call = self.post(hook, payload, what, call_id, ended)
            # The skip applies to this hook's own failures only: the next step is chained
            # after the errback, so a later hook's failure passes through untouched.
            call.addCallback(parsed)
            call.addErrback(failed)
            call.addCallback(step, index + 1)
            return call

        return defer.maybeDeferred(step, value, 0)

    def close(self) -> None:
        """Close the pooled (idle) connections."""
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.transport.loseConnection()


def _sender(client: Client) -> str:
    """How hook messages and log lines name who sent the request (nothing when unknown)."""
    return "" if client is UNKNOWN else f" from {client.describe()}"


def _document(data: bytes) -> dict[str, Any] | None:
    """A payload as the trace keeps it: the JSON object, or None if it is not one."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


class _Shown:
    """The ``Client`` object of one request's version 2 calls, made once when first needed."""

    __slots__ = ("client", "_wire")

    def __init__(self, client: Client) -> None:
        self.client = client
        self._wire: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        if self._wire is None:
            self._wire = client_to_wire(self.client)
        return self._wire


def _authz_payload(request: ClientRequest, client: Client,
                   response: ServerResponse | None = None) -> bytes:
    """The ``AuthZReq`` (or, with ``response``, ``AuthZRes``) dockerd would send for this."""
    body = request.body.encode("utf-8") if request.body is not None else None
    call = plugin_wire.authz_call_for(request, client, body, response)
    return json.dumps(call.to_wire()).encode()


def _authz_verdict(answer: bytes, value: Any) -> Any:
    """``value`` unchanged when the plugin allows it; ``_Refused`` when it denies."""
    try:
        verdict = plugin_wire.read_authz_answer(answer)
    except plugin_wire.PluginCallError as exc:
        raise AnswerError(str(exc)) from None
    if verdict.error:
        raise AnswerError(f"plugin error: {verdict.error}")
    if not verdict.allow:
        raise _Refused(verdict.message or "denied")
    return value


def _plugin_target(address: str, http_path: str) -> AdapterTarget:
    """Where to POST ``http_path`` to a plugin at ``address`` (as discovery gives it)."""
    scheme, _, rest = address.partition("://")
    if scheme == "unix":
        return AdapterTarget("unix", "http://localhost" + http_path, rest, http_path)
    if scheme in ("tcp", "http", "https"):
        kind = "https" if scheme == "https" else "http"
        return AdapterTarget(kind, f"{kind}://{rest.split('/')[0]}{http_path}", None, http_path)
    raise ValueError(f"plugin address {address!r}: unsupported scheme {scheme!r}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
