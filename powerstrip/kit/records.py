"""What an adapter's hooks get and give: ``Request``, ``Response``, and ``Refuse`` to say no.

Apart from the ``Adapter`` that calls the hooks (``powerstrip.kit.sdk``), so that each way of
serving an adapter (Powerstrip's hook calls, Docker's plugin calls in ``powerstrip.kit.plugin``)
builds the same records without importing the others. ``powerstrip.adapter`` exports them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from powerstrip.core.identity import Client
from powerstrip.hooks.wire import ClientRequest, Headers, ServerResponse

# None is a meaningful content type (the daemon sent none), so "not given" needs its own marker.
_KEEP: Any = object()


class Refuse(Exception):  # noqa: N818 - the name reads as what a hook does
    """Raised by a hook to refuse the call: the adapter answers ``status`` with
    ``{"message": message}``, and the proxy gives the client that status and message."""

    def __init__(self, status: int, message: str) -> None:
        # A 2xx would be read by the proxy as an answer, and a malformed one at that.
        if not 300 <= status <= 599:
            raise ValueError(f"a refusal status must be 300-599, not {status}")
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def _parse_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Request:
    """The client's request as a hook sees it.

    ``target`` is the raw request target (path and query, as the client spelled it); ``body`` is
    the JSON body as text, or None when the proxy shows none (no body, or one that is not JSON).
    ``call`` is the proxy's identifier for the client request (the same in every hook call made
    for it, pre and post), None when the caller sent none. In protocol version 2, ``headers``
    are the request's headers (registry credentials shown as ``<redacted>`` unless the
    adapter's mapping says ``credentials: true``) and ``client`` who sent it; in version 1 the
    headers are empty and the client None. Instances are immutable: hooks return changed copies.
    """

    method: str
    target: str
    body: str | None = None
    call: str | None = dataclasses.field(default=None, compare=False)
    headers: Headers = dataclasses.field(default_factory=Headers)
    client: Client | None = dataclasses.field(default=None, compare=False)

    @property
    def path(self) -> str:
        """The target without its query string, as spelled (not percent-decoded)."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters, each with its list of values."""
        return parse_qs(self.target.partition("?")[2], keep_blank_values=True)

    @property
    def json(self) -> Any:
        """The body parsed, or None if there is none or it is not JSON.

        Each access parses afresh, so the result may be changed and passed to ``with_json``.
        """
        return _parse_json(self.body)

    def with_json(self, obj: Any) -> Request:
        """A copy whose body is ``obj`` serialised as JSON."""
        return dataclasses.replace(self, body=json.dumps(obj))

    def replace(
        self,
        *,
        method: str | None = None,
        target: str | None = None,
        path: str | None = None,
        body: str | None = _KEEP,
        headers: Headers | None = None,
    ) -> Request:
        """A copy with the given fields changed. ``path`` changes the path and keeps the query
        string; ``target`` replaces both. ``headers`` (version 2) replaces them all: build it
        from ``self.headers.set(...)``."""
        if target is not None and path is not None:
            raise ValueError("give target or path, not both")
        if path is not None:
            _, mark, query = self.target.partition("?")
            target = path + mark + query
        return Request(
            method if method is not None else self.method,
            target if target is not None else self.target,
            self.body if body is _KEEP else body,
            self.call,
            self.headers if headers is None else headers,
            self.client,
        )

    @classmethod
    def from_wire(cls, request: ClientRequest, client: Client | None = None) -> Request:
        """The hook-side view of a ``ClientRequest`` (and, in version 2, its sender)."""
        return cls(request.method, request.request, request.body,
                   headers=Headers(request.headers), client=client)

    def to_wire(self) -> ClientRequest:
        """This request as the wire module encodes it."""
        return ClientRequest(self.method, self.target, self.body, headers=self.headers.pairs())


@dataclass(frozen=True)
class Response:
    """The daemon's response as a post-hook sees it; ``body`` is text (``""`` when empty);
    ``headers`` are its headers in protocol version 2 (empty in version 1)."""

    code: int
    content_type: str | None
    body: str | None
    headers: Headers = dataclasses.field(default_factory=Headers)

    @property
    def json(self) -> Any:
        """The body parsed, or None if it is not JSON; a fresh object on every access."""
        return _parse_json(self.body)

    def with_json(self, obj: Any, content_type: str = "application/json") -> Response:
        """A copy whose body is ``obj`` serialised as JSON, labelled ``content_type``."""
        return dataclasses.replace(self, body=json.dumps(obj), content_type=content_type)

    def replace(
        self,
        *,
        code: int | None = None,
        content_type: str | None = _KEEP,
        body: str | None = _KEEP,
        headers: Headers | None = None,
    ) -> Response:
        """A copy with the given fields changed (``content_type=None`` removes the header;
        ``headers``, version 2, replaces them all)."""
        return Response(
            code if code is not None else self.code,
            self.content_type if content_type is _KEEP else content_type,
            self.body if body is _KEEP else body,
            self.headers if headers is None else headers,
        )

    @classmethod
    def from_wire(cls, response: ServerResponse) -> Response:
        """The hook-side view of a ``ServerResponse``."""
        return cls(response.code, response.content_type, response.body,
                   Headers(response.headers))

    def to_wire(self) -> ServerResponse:
        """This response as the wire module encodes it."""
        return ServerResponse(self.content_type, self.body, self.code, self.headers.pairs())


class HookFailed(Exception):
    """A hook raised or returned something it must not; the message names the hook."""

