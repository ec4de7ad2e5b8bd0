"""The adapter wire format, protocol version 1, exactly as the 2015 Powerstrip spoke it.

Every hook call is an HTTP POST of a JSON document to the adapter; the adapter answers with a JSON
document carrying the (possibly modified) request or response. Facts original adapters rely on:
``Request`` is the raw path with its query string; ``Body`` is the body as a JSON *string* (text),
or null when there is none to show; an empty response body is ``""``; a missing response
Content-Type is null.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class AnswerError(ValueError):
    """An adapter's answer that does not follow the protocol; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """The request as hooks see it: ``body`` is text, or None when there is none to show.

    ``respell`` (proxy side, never on the wire) puts a JSON body a pre-hook answers with in the
    spelling the daemon decodes (``core.canonical``) before the next hook, or the daemon, sees
    it; it raises ValueError for a body that has no such spelling.
    """

    method: str
    request: str
    body: str | None
    respell: Callable[[str], str] | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        """The ``ClientRequest`` object of a hook call."""
        return {"Method": self.method, "Request": self.request, "Body": self.body}


@dataclass(frozen=True, slots=True)
class ServerResponse:
    """The daemon's response as post-hooks see it."""

    content_type: str | None
    body: str | None
    code: int

    def to_wire(self) -> dict[str, Any]:
        """The ``ServerResponse`` object of a post-hook call."""
        return {"ContentType": self.content_type, "Body": self.body, "Code": self.code}


def pre_hook_call(request: ClientRequest) -> bytes:
    """The JSON document POSTed to an adapter for a pre-hook."""
    return json.dumps({
        "PowerstripProtocolVersion": PROTOCOL_VERSION,
        "Type": "pre-hook",
        "ClientRequest": request.to_wire(),
    }).encode()


def post_hook_call(request: ClientRequest, response: ServerResponse) -> bytes:
    """The JSON document POSTed to an adapter for a post-hook."""
    return json.dumps({
        "PowerstripProtocolVersion": PROTOCOL_VERSION,
        "Type": "post-hook",
        "ClientRequest": request.to_wire(),
        "ServerResponse": response.to_wire(),
    }).encode()


def _document(data: bytes, error: type[ValueError], what: str) -> dict[str, Any]:
    """``data`` as a protocol document, a JSON object of this protocol version; else ``error``
    saying what is wrong with ``what`` (a call or an answer)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = data[:80].decode("utf-8", "replace")
        raise error(f"{what} is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(document, dict):
        raise error(f"{what} is a JSON {type(document).__name__}, not an object")
    version = document.get("PowerstripProtocolVersion", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise error(f"{what} speaks PowerstripProtocolVersion {version!r}, not 1")
    return document


def _answer_object(data: bytes, key: str) -> dict[str, Any]:
    inner = _document(data, AnswerError, "answer").get(key)
    if not isinstance(inner, dict):
        raise AnswerError(f"answer has no {key} object")
    return inner


_REQUIRED: Any = object()


def _field(
    inner: dict[str, Any], key: str, name: str, kinds: tuple[type, ...],
    default: Any = _REQUIRED, error: type[ValueError] = AnswerError,
) -> Any:
    if name not in inner:
        if default is _REQUIRED:
            raise error(f"{key} has no {name}")
        return default
    value = inner[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise error(f"{key}.{name} must be {wanted}, not {json.dumps(value)[:60]}")
    return value


def parse_pre_hook_answer(data: bytes, sent: ClientRequest) -> ClientRequest:
    """Read a pre-hook's answer. A field the adapter left out keeps the value it was sent."""
    key = "ModifiedClientRequest"
    inner = _answer_object(data, key)
    method = _field(inner, key, "Method", (str,), sent.method)
    request = _field(inner, key, "Request", (str,), sent.request)
    body = _field(inner, key, "Body", (str, type(None)), sent.body)
    if not method or not set(method) <= _TOKEN:
        raise AnswerError(f"{key}.Method is not an HTTP method: {method!r}")
    if not request.startswith("/") or any(c in request for c in " \r\n\t\x00"):
        raise AnswerError(f"{key}.Request is not a request path: {request[:80]!r}")
    if sent.respell is not None and body is not None and body != sent.body:
        try:
            body = sent.respell(body)
        except ValueError as exc:
            raise AnswerError(f"{key}.Body cannot be shown as the daemon would read it: "
                              f"{exc}") from None
    return ClientRequest(method, request, body, sent.respell)


def parse_post_hook_answer(data: bytes, sent: ServerResponse) -> ServerResponse:
    """Read a post-hook's answer. A field the adapter left out keeps the value it was sent."""
    key = "ModifiedServerResponse"
    inner = _answer_object(data, key)
    content_type = _field(inner, key, "ContentType", (str, type(None)), sent.content_type)
    body = _field(inner, key, "Body", (str, type(None)), sent.body)
    code = _field(inner, key, "Code", (int,), sent.code)
    if not 100 <= code <= 599:
        raise AnswerError(f"{key}.Code is not an HTTP status: {code}")
    if content_type is not None and any(c in content_type for c in "\r\n\x00"):
        raise AnswerError(f"{key}.ContentType is not a header value: {content_type[:80]!r}")
    return ServerResponse(content_type, body, code)


class CallError(ValueError):
    """A hook call (as an adapter receives it) that does not follow the protocol."""


def parse_hook_call(
    payload: bytes,
) -> tuple[str, ClientRequest, ServerResponse | None]:
    """Read a hook call, adapter side: its ``Type`` ("pre-hook" or "post-hook"), the request,
    and for a post-hook the response. Raises CallError saying what is wrong."""
    document = _document(payload, CallError, "it")
    kind = document.get("Type")
    if kind not in ("pre-hook", "post-hook"):
        raise CallError(f"Type must be \"pre-hook\" or \"post-hook\", not {json.dumps(kind)}")
    inner = document.get("ClientRequest")
    if not isinstance(inner, dict):
        raise CallError("no ClientRequest object")
    key = "ClientRequest"
    request = ClientRequest(
        _field(inner, key, "Method", (str,), error=CallError),
        _field(inner, key, "Request", (str,), error=CallError),
        _field(inner, key, "Body", (str, type(None)), error=CallError),
    )
    if kind == "pre-hook":
        return kind, request, None
    inner = document.get("ServerResponse")
    if not isinstance(inner, dict):
        raise CallError("post-hook call has no ServerResponse object")
    key = "ServerResponse"
    response = ServerResponse(
        _field(inner, key, "ContentType", (str, type(None)), error=CallError),
        _field(inner, key, "Body", (str, type(None)), error=CallError),
        _field(inner, key, "Code", (int,), error=CallError),
    )
    return kind, request, response


def pre_hook_answer(request: ClientRequest) -> dict[str, Any]:
    """The answer document to a pre-hook call: the request to forward."""
    return {"PowerstripProtocolVersion": PROTOCOL_VERSION,
            "ModifiedClientRequest": request.to_wire()}


def post_hook_answer(response: ServerResponse) -> dict[str, Any]:
    """The answer document to a post-hook call: the response to pass on."""
    return {"PowerstripProtocolVersion": PROTOCOL_VERSION,
            "ModifiedServerResponse": response.to_wire()}


def refusal_message(body: bytes) -> str:
    """An adapter's own words from a refusal's body: a JSON ``message`` (or ``error``), else
    the text itself."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if isinstance(document, dict):
        for key in ("message", "Message", "error", "Error"):
            if isinstance(document.get(key), str):
                return document[key]
    return text
