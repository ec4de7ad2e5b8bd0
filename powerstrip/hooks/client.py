"""Calling adapters: hook chains over pooled keep-alive HTTP, with timeouts and clear failures.

This is the Twisted side of hooks. What to call is decided from the configuration and the
matcher (pure code); the wire format is ``powerstrip.hooks.wire``. Every way an adapter call can end
maps to one outcome: an answer, a refusal (the adapter's own non-2xx status), or a failure
(502 unreachable or bad answer, 504 timeout) whose message names the adapter, the request, the
endpoint and the cause.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence

import treq
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from powerstrip.hooks.config import AdapterSpec
from powerstrip.hooks.plans import Hook
from powerstrip.hooks.wire import (
    AnswerError,
    ClientRequest,
    ServerResponse,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
    refusal_message,
)

log = logging.getLogger(__name__)

#: An adapter's answer larger than this is a bad answer: it can only be the request or response
#: it was sent, which are themselves limited by ``max_body``.
ANSWER_SLACK = 64 * 1024

#: The request header naming the client request a hook call is made for (see ``post``).
CALL_HEADER = b"Powerstrip-Call"


class HookError(Exception):
    """A hook chain ended without an answer to pass on; ``status`` and ``message`` are what the
    client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _NoDelay:
    """A client endpoint whose TCP connections send at once (TCP_NODELAY).

    Twisted writes a request's head and its body in separate writes; with Nagle's algorithm the
    body then waits for the adapter's delayed ACK, some 40 ms on every call.
    """

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def connect(self, factory: object) -> defer.Deferred:
        def no_delay(protocol: object) -> object:
            transport = protocol.transport
            while transport is not None:
                setter = getattr(transport, "setTcpNoDelay", None)
                if setter is not None:
                    setter(True)
                    break
                transport = getattr(transport, "transport", None)
            return protocol

        return self.inner.connect(factory).addCallback(no_delay)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Endpoints for adapter URLs: TCP (with TLS for https) without Nagle, and unix sockets.

    A unix socket gets a distinct host name (the quoted path), so the connection pool, which is
    keyed by host, never hands one adapter's connection to another.
    """

    def __init__(self, reactor: object) -> None:
        self.reactor = reactor
        self.paths: dict[bytes, str] = {}
        self.hosts: dict[str, str] = {}

    def host_for(self, path: str) -> str:
        host = self.hosts.get(path)
        if host is None:
            # A hash keeps the name a valid host label whatever the path's characters and length.
            host = "unix-" + hashlib.sha256(path.encode()).hexdigest()[:32] + ".invalid"
            self.hosts[path] = host
            self.paths[host.encode()] = path
        return host

    def endpointForURI(self, uri: object) -> object:  # noqa: N802 - Twisted's name
        path = self.paths.get(uri.host)
        if path is not None:
            return UNIXClientEndpoint(self.reactor, path)
        host = uri.host.decode("idna")
        endpoint = HostnameEndpoint(self.reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return _NoDelay(endpoint)


class AdapterClient:
    """Posts hook calls to adapters over a shared pool of persistent connections."""

    def __init__(self, reactor: object, max_body: int = 4 * 1024 * 1024) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.pool.retryAutomatically = False
        self._endpoints = _Endpoints(reactor)
        self._client = treq.client.HTTPClient(
            Agent.usingEndpointFactory(reactor, self._endpoints, pool=self.pool)
        )
        self.max_body = max_body
        # Unique across proxies and restarts, short enough to read in a log line.
        self._call_prefix = os.urandom(4).hex()
        self._calls = itertools.count(1)

    def _url(self, adapter: AdapterSpec) -> str:
        target = adapter.target
        if target.kind == "unix":
            return f"http://{self._endpoints.host_for(target.socket_path)}{target.http_path}"
        return target.url

    @defer.inlineCallbacks
    def post(
        self, hook: Hook, payload: bytes, what: str, call_id: str | None = None
    ) -> defer.Generator:
        """POST ``payload`` to the hook's adapter; return the answer's body on a 2xx.

        Raises HookError for a refusal (the adapter's status) and for any failure (502/504).
        ``what`` describes the request for messages, e.g. ``pre-hook for POST /containers/create``.
        ``call_id`` (sent as the ``Powerstrip-Call`` header) is the same for every hook call
        made for one client request, so an adapter seen twice in a chain can tell what the
        hooks between its two calls changed.
        """
        adapter = hook.adapter
        started = time.monotonic()
        outcome = "error"
        headers = {b"Content-Type": [b"application/json"]}
        if call_id is not None:
            headers[CALL_HEADER] = [call_id.encode("ascii")]
        call = self._client.post(self._url(adapter), data=payload, headers=headers,
                                 unbuffered=True)
        call.addCallback(self._read, len(payload))
        # Cancelling surfaces as whatever the HTTP client was doing at that moment (often
        # "response never received"), so the timer itself records that it fired.
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            call.cancel()

        timer = self.reactor.callLater(adapter.timeout, expire)
        try:
            try:
                status, body = yield call
            except Exception as exc:
                if fired:
                    outcome = "timeout"
                    raise HookError(504, self._describe(
                        hook, what, f"timed out after {adapter.timeout:g} s")) from None
                if isinstance(exc, AnswerError):
                    outcome = "bad answer"
                    raise HookError(502, self._describe(
                        hook, what, f"bad answer: {exc}")) from None
                outcome = "unreachable"
                raise HookError(502, self._describe(
                    hook, what, f"unreachable: {_reason(exc)}")) from None
            if not 200 <= status < 300:
                outcome = f"refused {status}"
                message = refusal_message(body) or f"refused with status {status}"
                raise HookError(status, f"adapter {adapter.name} refused {what} "
                                        f"(endpoint \"{hook.endpoint}\"): {message}")
            outcome = str(status)
            return body
        finally:
            if timer.active():
                timer.cancel()
            log.info("adapter %s %s (endpoint \"%s\"): %s in %.1f ms", adapter.name, what,
                     hook.endpoint, outcome, (time.monotonic() - started) * 1000)

    def _read(self, response: object, sent: int) -> defer.Deferred:
        limit = sent + self.max_body + ANSWER_SLACK
        received: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > limit:
                raise AnswerError(f"answer larger than {limit} bytes")
            received.append(data)

        done = treq.collect(response, collect)
        done.addCallback(lambda _: (response.code, b"".join(received)))
        return done

    @staticmethod
    def _describe(hook: Hook, what: str, cause: str) -> str:
        adapter = hook.adapter
        return (f"adapter {adapter.name} ({adapter.url}) {cause} on {what} "
                f"(endpoint \"{hook.endpoint}\")")

    def new_call_id(self) -> str:
        """A fresh identifier for the hook calls of one client request."""
        return f"{self._call_prefix}-{next(self._calls)}"

    def run_pre(
        self, hooks: Sequence[Hook], request: ClientRequest, call_id: str | None = None
    ) -> defer.Deferred:
        """Run pre-hooks in order, each seeing what the one before returned."""
        return self._chain(
            hooks, request, lambda r: f"pre-hook for {r.method} {r.request}",
            pre_hook_call, parse_pre_hook_answer, call_id,
        )

    def run_post(
        self,
        hooks: Sequence[Hook],
        request: ClientRequest,
        response: ServerResponse,
        call_id: str | None = None,
    ) -> defer.Deferred:
        """Run post-hooks in order, each seeing the response the one before returned."""
        what = f"post-hook for {request.method} {request.request}"
        return self._chain(
            hooks, response, lambda _: what,
            lambda r: post_hook_call(request, r), parse_post_hook_answer, call_id,
        )

    @defer.inlineCallbacks
    def _chain(
        self, hooks: Sequence[Hook], value: object, describe: Callable[[object], str],
        encode: Callable[[object], bytes], parse: Callable[[bytes, object], object],
        call_id: str | None = None,
    ) -> defer.Generator:
        if call_id is None:
            call_id = self.new_call_id()
        for hook in hooks:
            what = describe(value)
            try:
                answer = yield self.post(hook, encode(value), what, call_id)
                try:
                    value = parse(answer, value)
                except AnswerError as exc:
                    raise HookError(502, self._describe(
                        hook, what, f"bad answer: {exc}")) from None
            except HookError as exc:
                if exc.status in (502, 504) and hook.adapter.on_error == "skip":
                    log.warning("skipping adapter %s (on_error: skip): %s",
                                hook.adapter.name, exc.message)
                    continue
                raise
        return value

    def close(self) -> defer.Deferred:
        """Close the pooled connections."""
        return self.pool.closeCachedConnections()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ResponseFailed):
        reasons = [r.getErrorMessage() for r in exc.reasons]
        return "; ".join(reasons) or "the connection failed"
    text = str(exc).strip()
    return text or type(exc).__name__
