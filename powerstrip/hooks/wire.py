"""The adapter wire format: protocol version 1 exactly as the 2015 Powerstrip spoke it, and 2.

Every hook call is an HTTP POST of a JSON document to the adapter; the adapter answers with a JSON
document carrying the (possibly modified) request or response. Facts original adapters rely on:
``Request`` is the raw path with its query string; ``Body`` is the body as a JSON *string* (text),
or null when there is none to show; an empty response body is ``""``; a missing response
Content-Type is null.

Version 2, for adapters whose mapping says ``protocol: 2``, adds who sent the request
(``Client``) and the headers of the request and response (``Headers``, which an answer may
change, apart from those the proxy owns). A version 1 call stays byte for byte what it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from powerstrip.core.identity import Certificate, Client

PROTOCOL_VERSION = 1
#: The versions an adapter's mapping may ask for (``protocol:``).
PROTOCOL_VERSIONS = (1, 2)

#: A message's headers as hooks handle them: (name, value) pairs in the order they came, the
#: bytes as latin-1 text (so that they go back to the wire exactly).
HeaderPairs = tuple[tuple[str, str], ...]

#: Headers the proxy keeps as they were, whatever an answer says: they frame the message or
#: belong to one connection (RFC 9110 7.6.1), and the proxy writes them itself.
OWNED_HEADERS = frozenset({
    "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Host", "Keep-Alive",
    "Proxy-Connection", "Te", "Trailer", "Proxy-Authenticate", "Proxy-Authorization",
})
#: Headers carrying registry passwords: shown only to adapters with ``credentials: true``.
CREDENTIAL_HEADERS = frozenset({"X-Registry-Auth", "X-Registry-Config"})
REDACTED = "<redacted>"

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class AnswerError(ValueError):
    """An adapter's answer that does not follow the protocol; the message says what is wrong."""


def canonical_header(name: str) -> str:
    """``name`` as Go's ``textproto.CanonicalMIMEHeaderKey`` writes it (``content-type`` ->
    ``Content-Type``), the form the daemon itself looks headers up by; a name that is not an
    HTTP token is returned as it is, as Go does."""
    if not name or not set(name) <= _TOKEN:
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class Headers(Mapping[str, tuple[str, ...]]):
    """Headers as a hook reads them: canonical names, each with its values in order.

    Looking up is case-insensitive. Instances are immutable: ``set`` and ``remove`` return
    changed copies.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Iterable[str]] | Iterable[tuple[str, str]] = ()) -> None:
        """From a mapping of names to lists of values, or from (name, value) pairs."""
        merged: dict[str, list[str]] = {}
        if isinstance(items, Mapping):
            pairs: Iterable[tuple[str, str]] = (
                (name, value) for name, values in items.items() for value in values)
        else:
            pairs = items
        for name, value in pairs:
            merged.setdefault(canonical_header(name), []).append(value)
        self._items: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in merged.items()}

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._items[canonical_header(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_header(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"Headers({ {k: list(v) for k, v in self._items.items()} !r})"

    def first(self, name: str) -> str | None:
        """The first value of ``name`` (as Go's ``Header.Get``), or None."""
        values = self._items.get(canonical_header(name))
        return values[0] if values else None

    def set(self, name: str, *values: str) -> Headers:
        """A copy where ``name`` has exactly ``values`` (none: removed)."""
        copy = Headers()
        copy._items = dict(self._items)
        key = canonical_header(name)
        if values:
            copy._items[key] = tuple(values)
        else:
            copy._items.pop(key, None)
        return copy

    def remove(self, name: str) -> Headers:
        """A copy without ``name``."""
        return self.set(name)

    def pairs(self) -> HeaderPairs:
        """(name, value) pairs, canonical names, values in order."""
        return tuple((name, value) for name, values in self._items.items() for value in values)

    def to_wire(self) -> dict[str, list[str]]:
        """The ``Headers`` object of a v2 document."""
        return {name: list(values) for name, values in self._items.items()}


def headers_to_wire(pairs: HeaderPairs, credentials: bool) -> dict[str, list[str]]:
    """The ``Headers`` object shown to an adapter: canonical names, values in order, and
    registry credentials redacted unless ``credentials``."""
    shown: dict[str, list[str]] = {}
    for name, value in pairs:
        shown.setdefault(canonical_header(name), []).append(value)
    if not credentials:
        for name in CREDENTIAL_HEADERS & shown.keys():
            shown[name] = [REDACTED]
    return shown


def _answer_headers(
    value: Any, sent: HeaderPairs, credentials: bool, where: str,
) -> HeaderPairs:
    """The headers an answer's ``Headers`` object says to send on, checked; ``sent`` itself
    when they are what the adapter was shown (so an echo changes nothing, not even spelling)."""
    if not isinstance(value, dict):
        raise AnswerError(f"{where} must be an object of header names to lists of values, "
                          f"not {json.dumps(value)[:60]}")
    answer: dict[str, list[str]] = {}
    for name, values in value.items():
        if not name or not set(name) <= _TOKEN:
            raise AnswerError(f"{where} has a name that is not an HTTP header name: {name!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise AnswerError(f"{where}[{json.dumps(name)}] must be a list of strings, "
                              f"not {json.dumps(values)[:60]}")
        for item in values:
            if any(c in item for c in "\r\n\x00") or any(ord(c) > 0xFF for c in item):
                raise AnswerError(f"{where}[{json.dumps(name)}] has a value that cannot be "
                                  f"sent as a header: {item[:80]!r}")
        key = canonical_header(name)
        if key in answer:
            raise AnswerError(f"{where} names {key} twice (spelled differently)")
        answer[key] = values
    shown = headers_to_wire(sent, credentials)
    if answer == shown:
        return sent
    original: dict[str, list[str]] = {}
    for name, item in sent:
        original.setdefault(canonical_header(name), []).append(item)
    for key in OWNED_HEADERS & (answer.keys() | original.keys()):
        if key in answer and answer[key] != original.get(key):
            raise AnswerError(f"{where} sets {key}, which the proxy owns")
    if not credentials:
        for key in CREDENTIAL_HEADERS & answer.keys():
            if answer[key] == [REDACTED] and key in original:
                answer[key] = original[key]
    # What the proxy owns stays as it came, spelling included; the rest is the answer's.
    kept = tuple((name, item) for name, item in sent if canonical_header(name) in OWNED_HEADERS)
    return kept + tuple((key, item) for key, values in answer.items() if key not in OWNED_HEADERS
                        for item in values)


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
    #: The request's headers (version 2 shows them; version 1 never does).
    headers: HeaderPairs = ()

    def to_wire(self) -> dict[str, Any]:
        """The ``ClientRequest`` object of a version 1 hook call."""
        return {"Method": self.method, "Request": self.request, "Body": self.body}

    def to_wire_v2(self, credentials: bool = False) -> dict[str, Any]:
        """The ``ClientRequest`` object of a version 2 hook call."""
        return {"Method": self.method, "Request": self.request, "Body": self.body,
                "Headers": headers_to_wire(self.headers, credentials)}


@dataclass(frozen=True, slots=True)
class ServerResponse:
    """The daemon's response as post-hooks see it."""

    content_type: str | None
    body: str | None
    code: int
    #: The daemon's response headers (version 2 shows them).
    headers: HeaderPairs = ()

    def to_wire(self) -> dict[str, Any]:
        """The ``ServerResponse`` object of a version 1 post-hook call."""
        return {"ContentType": self.content_type, "Body": self.body, "Code": self.code}

    def to_wire_v2(self, credentials: bool = False) -> dict[str, Any]:
        """The ``ServerResponse`` object of a version 2 post-hook call."""
        return {"ContentType": self.content_type, "Body": self.body, "Code": self.code,
                "Headers": headers_to_wire(self.headers, credentials)}


def client_to_wire(client: Client) -> dict[str, Any]:
    """The ``Client`` object of a version 2 call."""
    certificate = client.certificate
    return {
        "Transport": client.transport,
        "Address": client.address,
        "UID": client.uid,
        "GID": client.gid,
        "PID": client.pid,
        "User": client.user,
        "Groups": list(client.groups),
        "Certificate": None if certificate is None else {
            "Subject": certificate.subject,
            "CommonName": certificate.common_name,
            "SANs": list(certificate.sans),
            "SHA256": certificate.sha256,
        },
    }


def pre_hook_call(
    request: ClientRequest, *, version: int = 1, client: Client | dict[str, Any] | None = None,
    credentials: bool = False,
) -> bytes:
    """The JSON document POSTed to an adapter for a pre-hook.

    Version 2 adds ``client`` (a ``Client``, or its ``client_to_wire`` form) and the headers,
    registry credentials redacted unless ``credentials``.
    """
    if version == 1:
        return json.dumps({
            "PowerstripProtocolVersion": PROTOCOL_VERSION,
            "Type": "pre-hook",
            "ClientRequest": request.to_wire(),
        }).encode()
    return json.dumps({
        "PowerstripProtocolVersion": 2,
        "Type": "pre-hook",
        "Client": _client_object(client),
        "ClientRequest": request.to_wire_v2(credentials),
    }).encode()


def post_hook_call(
    request: ClientRequest, response: ServerResponse, *, version: int = 1,
    client: Client | dict[str, Any] | None = None, credentials: bool = False,
) -> bytes:
    """The JSON document POSTed to an adapter for a post-hook (see ``pre_hook_call``)."""
    if version == 1:
        return json.dumps({
            "PowerstripProtocolVersion": PROTOCOL_VERSION,
            "Type": "post-hook",
            "ClientRequest": request.to_wire(),
            "ServerResponse": response.to_wire(),
        }).encode()
    return json.dumps({
        "PowerstripProtocolVersion": 2,
        "Type": "post-hook",
        "Client": _client_object(client),
        "ClientRequest": request.to_wire_v2(credentials),
        "ServerResponse": response.to_wire_v2(credentials),
    }).encode()


def _client_object(client: Client | dict[str, Any] | None) -> dict[str, Any]:
    if client is None:
        raise ValueError("a version 2 call needs the client")
    return client if isinstance(client, dict) else client_to_wire(client)


def _document(
    data: bytes, error: type[ValueError], what: str, versions: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """``data`` as a protocol document, a JSON object of one of ``versions``; else ``error``
    saying what is wrong with ``what`` (a call or an answer)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = data[:80].decode("utf-8", "replace")
        raise error(f"{what} is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(document, dict):
        raise error(f"{what} is a JSON {type(document).__name__}, not an object")
    version = document.get("PowerstripProtocolVersion", PROTOCOL_VERSION)
    if version not in versions or isinstance(version, bool):
        if error is AnswerError and version in PROTOCOL_VERSIONS:
            raise error(f"{what} speaks PowerstripProtocolVersion {version!r}, but the "
                        f"adapter's mapping does not say 'protocol: {version}'")
        wanted = " or ".join(str(v) for v in versions)
        raise error(f"{what} speaks PowerstripProtocolVersion {version!r}, not {wanted}")
    return document


def _answer_object(data: bytes, key: str, version: int = 1) -> dict[str, Any]:
    inner = _document(data, AnswerError, "answer", PROTOCOL_VERSIONS[:version]).get(key)
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


def parse_pre_hook_answer(
    data: bytes, sent: ClientRequest, *, version: int = 1, credentials: bool = False,
) -> ClientRequest:
    """Read a pre-hook's answer. A field the adapter left out keeps the value it was sent.

    ``version`` and ``credentials`` are the adapter's mapping's: only a version 2 adapter's
    answer may change the headers (a version 1 answer's ``Headers`` means nothing, as any other
    field the protocol does not know).
    """
    key = "ModifiedClientRequest"
    inner = _answer_object(data, key, version)
    method = _field(inner, key, "Method", (str,), sent.method)
    request = _field(inner, key, "Request", (str,), sent.request)
    body = _field(inner, key, "Body", (str, type(None)), sent.body)
    if not method or not set(method) <= _TOKEN:
        raise AnswerError(f"{key}.Method is not an HTTP method: {method!r}")
    if not request.startswith("/") or any(c in request for c in " \r\n\t\x00"):
        raise AnswerError(f"{key}.Request is not a request path: {request[:80]!r}")
    if request != sent.request and any(ord(c) > 0xFF for c in request):
        # A request line carries bytes; the proxy shows them as Latin-1 and sends them back so.
        raise AnswerError(f"{key}.Request has characters beyond Latin-1, which a request line "
                          f"cannot carry; percent-encode them: {request[:80]!r}")
    if sent.respell is not None and body is not None and body != sent.body:
        try:
            body = sent.respell(body)
        except ValueError as exc:
            raise AnswerError(f"{key}.Body cannot be shown as the daemon would read it: "
                              f"{exc}") from None
    headers = sent.headers
    if version >= 2 and "Headers" in inner:
        headers = _answer_headers(inner["Headers"], sent.headers, credentials, f"{key}.Headers")
    return ClientRequest(method, request, body, sent.respell, headers)


def parse_post_hook_answer(
    data: bytes, sent: ServerResponse, *, version: int = 1, credentials: bool = False,
) -> ServerResponse:
    """Read a post-hook's answer. A field the adapter left out keeps the value it was sent.

    In version 2 a ``ContentType`` the answer changes is the one sent; otherwise a changed
    ``Content-Type`` in its ``Headers`` is.
    """
    key = "ModifiedServerResponse"
    inner = _answer_object(data, key, version)
    content_type = _field(inner, key, "ContentType", (str, type(None)), sent.content_type)
    body = _field(inner, key, "Body", (str, type(None)), sent.body)
    code = _field(inner, key, "Code", (int,), sent.code)
    if not 100 <= code <= 599:
        raise AnswerError(f"{key}.Code is not an HTTP status: {code}")
    headers = sent.headers
    if version >= 2 and "Headers" in inner:
        headers = _answer_headers(inner["Headers"], sent.headers, credentials, f"{key}.Headers")
        if content_type == sent.content_type and headers is not sent.headers:
            named = Headers(headers).get("Content-Type")
            if named is None:
                content_type = None
            elif content_type is None or named[0] != content_type:
                content_type = named[0]
    if content_type is not None and content_type != sent.content_type and (
            any(c in content_type for c in "\r\n\x00") or any(ord(c) > 0xFF for c in content_type)):
        raise AnswerError(f"{key}.ContentType is not a header value: {content_type[:80]!r}")
    if content_type != sent.content_type and content_type != _content_type_of(headers):
        # The headers shown to the next post-hook say what is sent: one that only adds a
        # header must not bring back the Content-Type an earlier hook changed.
        headers = _with_content_type(headers, content_type)
    return ServerResponse(content_type, body, code, headers)


def _content_type_of(headers: HeaderPairs) -> str | None:
    found = [value for name, value in headers if name.lower() == "content-type"]
    return found[0] if found else None


def _with_content_type(headers: HeaderPairs, content_type: str | None) -> HeaderPairs:
    """``headers`` with their Content-Type (spelled as they spell it) set to ``content_type``,
    or without one for None."""
    spelled = next((name for name, _ in headers if name.lower() == "content-type"),
                   "Content-Type")
    kept = tuple((name, value) for name, value in headers if name.lower() != "content-type")
    return kept if content_type is None else kept + ((spelled, content_type),)


class CallError(ValueError):
    """A hook call (as an adapter receives it) that does not follow the protocol."""


@dataclass(frozen=True)
class HookCall:
    """A hook call as an adapter reads it: its ``kind`` ("pre-hook" or "post-hook"), protocol
    ``version``, the request, for a post-hook the response, and in version 2 the client."""

    kind: str
    version: int
    request: ClientRequest
    response: ServerResponse | None
    client: Client | None


def read_hook_call(payload: bytes) -> HookCall:
    """Read a hook call, adapter side, of either version. Raises CallError saying what is
    wrong."""
    document = _document(payload, CallError, "it", PROTOCOL_VERSIONS)
    version = document.get("PowerstripProtocolVersion", PROTOCOL_VERSION)
    kind = document.get("Type")
    if kind not in ("pre-hook", "post-hook"):
        raise CallError(f"Type must be \"pre-hook\" or \"post-hook\", not {json.dumps(kind)}")
    inner = document.get("ClientRequest")
    if not isinstance(inner, dict):
        raise CallError("no ClientRequest object")
    key = "ClientRequest"
    client = None
    headers: HeaderPairs = ()
    if version == 2:
        client = _read_client(document.get("Client"))
        headers = _read_headers(inner, key)
    request = ClientRequest(
        _field(inner, key, "Method", (str,), error=CallError),
        _field(inner, key, "Request", (str,), error=CallError),
        _field(inner, key, "Body", (str, type(None)), error=CallError),
        headers=headers,
    )
    if kind == "pre-hook":
        return HookCall(kind, version, request, None, client)
    inner = document.get("ServerResponse")
    if not isinstance(inner, dict):
        raise CallError("post-hook call has no ServerResponse object")
    key = "ServerResponse"
    response = ServerResponse(
        _field(inner, key, "ContentType", (str, type(None)), error=CallError),
        _field(inner, key, "Body", (str, type(None)), error=CallError),
        _field(inner, key, "Code", (int,), error=CallError),
        _read_headers(inner, key) if version == 2 else (),
    )
    return HookCall(kind, version, request, response, client)


def parse_hook_call(
    payload: bytes,
) -> tuple[str, ClientRequest, ServerResponse | None]:
    """Read a hook call, adapter side: its ``Type`` ("pre-hook" or "post-hook"), the request,
    and for a post-hook the response. Raises CallError saying what is wrong."""
    call = read_hook_call(payload)
    return call.kind, call.request, call.response


def _read_headers(inner: dict[str, Any], key: str) -> HeaderPairs:
    value = _field(inner, key, "Headers", (dict,), error=CallError)
    pairs = []
    for name, values in value.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise CallError(f"{key}.Headers[{json.dumps(name)}] must be a list of strings")
        pairs.extend((name, item) for item in values)
    return tuple(pairs)


def _read_client(value: Any) -> Client:
    if not isinstance(value, dict):
        raise CallError("a version 2 call has no Client object")
    key = "Client"
    transport = _field(value, key, "Transport", (str,), error=CallError)
    if transport not in ("unix", "tcp", "tls"):
        raise CallError(f"Client.Transport must be unix, tcp or tls, not {transport!r}")
    numbers = [_field(value, key, name, (int, type(None)), None, CallError)
               for name in ("UID", "GID", "PID")]
    groups = _field(value, key, "Groups", (list,), [], CallError)
    if not all(isinstance(g, str) for g in groups):
        raise CallError("Client.Groups must be a list of strings")
    certificate = None
    shown = _field(value, key, "Certificate", (dict, type(None)), None, CallError)
    if shown is not None:
        key = "Client.Certificate"
        sans = _field(shown, key, "SANs", (list,), [], CallError)
        if not all(isinstance(s, str) for s in sans):
            raise CallError("Client.Certificate.SANs must be a list of strings")
        certificate = Certificate(
            _field(shown, key, "Subject", (str,), error=CallError),
            _field(shown, key, "CommonName", (str, type(None)), None, CallError),
            tuple(sans),
            _field(shown, key, "SHA256", (str,), error=CallError),
        )
    return Client(
        transport,  # type: ignore[arg-type] - checked above
        _field(value, "Client", "Address", (str,), error=CallError),
        *numbers,
        user=_field(value, "Client", "User", (str, type(None)), None, CallError),
        groups=tuple(groups),
        certificate=certificate,
    )


def pre_hook_answer(request: ClientRequest, version: int = 1) -> dict[str, Any]:
    """The answer document to a pre-hook call: the request to forward (with its headers in
    version 2)."""
    if version == 1:
        return {"PowerstripProtocolVersion": PROTOCOL_VERSION,
                "ModifiedClientRequest": request.to_wire()}
    return {"PowerstripProtocolVersion": 2,
            "ModifiedClientRequest": request.to_wire_v2(credentials=True)}


def post_hook_answer(response: ServerResponse, version: int = 1) -> dict[str, Any]:
    """The answer document to a post-hook call: the response to pass on."""
    if version == 1:
        return {"PowerstripProtocolVersion": PROTOCOL_VERSION,
                "ModifiedServerResponse": response.to_wire()}
    return {"PowerstripProtocolVersion": 2,
            "ModifiedServerResponse": response.to_wire_v2(credentials=True)}


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
