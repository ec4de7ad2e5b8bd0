"""A small asynchronous Docker Engine API client for adapters (treq over Twisted endpoints).

Adapters that do real work talk to a Docker Engine themselves: the network adapter creates
networks, the volumes adapter creates volumes and moves their data between hosts. They must talk
to the daemon directly, not through the Powerstrip in front of it, or their own calls would run
the hooks again. Hooks run on the reactor, so a blocking client would stall every other call;
this one returns Deferreds (awaitable from ``async def`` hooks).

Addresses are written as ``DOCKER_HOST`` is: ``unix:///var/run/docker.sock``,
``tcp://HOST:PORT`` or bare ``HOST:PORT``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import quote, urlencode

import treq
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, clientFromString
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from powerstrip.proxy.addresses import parse_address

__all__ = ["EngineClient", "EngineError"]

#: The API version adapters speak; dockerd 20.10 (1.41) and every later engine accept it.
API_VERSION = "v1.41"


class EngineError(Exception):
    """The engine answered a non-2xx status, or could not be reached (``status`` 502)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """Every request goes to the engine's own socket, whatever the URL's host says."""

    def __init__(self, reactor: Any, address: str) -> None:
        parsed = parse_address(address)
        if parsed.kind == "unix":
            self.endpoint = UNIXClientEndpoint(reactor, parsed.path, timeout=10)
        elif parsed.kind == "endpoint":
            self.endpoint = clientFromString(reactor, parsed.description)
        else:
            self.endpoint = HostnameEndpoint(reactor, parsed.host, parsed.port, timeout=10)

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.endpoint


class EngineClient:
    """One Docker Engine, reached at ``address`` over a pool of kept-alive connections."""

    def __init__(self, address: str, reactor: Any = None, timeout: float = 60.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.address = address
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(reactor, address), pool=self.pool)
        self._http = treq.client.HTTPClient(agent)

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The URL of API ``path`` (e.g. ``/containers/json``), with ``query`` encoded; values
        that are dicts or lists are sent as JSON, as the engine's ``filters`` expect."""
        # The host name is what the docker CLI sends over a unix socket; the agent ignores it.
        url = f"http://api.moby.localhost/{API_VERSION}{quote(path)}"
        if query:
            pairs = {
                key: json.dumps(value) if isinstance(value, dict | list) else value
                for key, value in query.items()
            }
            url += "?" + urlencode(pairs)
        return url

    @defer.inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        data: IO[bytes] | None = None,
        content_type: str = "application/x-tar",
    ) -> defer.Generator:
        """Send one request; fire with the parsed JSON answer (None when the body is empty).

        ``body`` is sent as JSON; ``data`` (a binary file) is streamed as ``content_type``.
        Raises ``EngineError`` with the engine's status and message on a non-2xx answer.
        """
        headers: dict[bytes, list[bytes]] = {}
        payload: Any = None
        if body is not None:
            headers[b"Content-Type"] = [b"application/json"]
            payload = json.dumps(body).encode()
        elif data is not None:
            headers[b"Content-Type"] = [content_type.encode()]
            payload = FileBodyProducer(data)
        try:
            response = yield self._http.request(
                method, self.url(path, query), headers=headers, data=payload,
                timeout=self.timeout,
            )
            content = yield response.content()
        except Exception as exc:  # noqa: BLE001 - every way of not getting an answer
            raise self._unreachable(exc) from exc
        if not 200 <= response.code < 300:
            raise EngineError(response.code, _message(content))
        if not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            return content.decode(errors="replace")

    @defer.inlineCallbacks
    def download(
        self, path: str, sink: IO[bytes], query: Mapping[str, Any] | None = None
    ) -> defer.Generator:
        """GET ``path`` and stream the body into the binary file ``sink``; fires with the number
        of bytes written. Memory stays bounded whatever the size."""
        try:
            # Unbuffered: treq would otherwise hold the whole body in memory before the sink
            # sees a byte.
            response = yield self._http.get(self.url(path, query), timeout=self.timeout,
                                            unbuffered=True)
        except Exception as exc:  # noqa: BLE001
            raise self._unreachable(exc) from exc
        if not 200 <= response.code < 300:
            content = yield response.content()
            raise EngineError(response.code, _message(content))
        written = [0]

        def write(chunk: bytes) -> None:
            sink.write(chunk)
            written[0] += len(chunk)

        yield treq.collect(response, write)
        return written[0]

    def _unreachable(self, exc: Exception) -> EngineError:
        return EngineError(
            502, f"Docker Engine at {self.address} unreachable: {type(exc).__name__}: {exc}")

    def close(self) -> defer.Deferred[None]:
        """Close the pooled connections."""
        return self.pool.closeCachedConnections()


def _message(content: bytes) -> str:
    """The engine's ``{"message": ...}``, or its raw answer when it is not that."""
    try:
        document = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip()
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return document["message"]
    return content.decode(errors="replace").strip()
