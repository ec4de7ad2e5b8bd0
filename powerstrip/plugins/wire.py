"""Docker's plugin protocol (the "legacy" plugins dockerd finds in ``/run/docker/plugins``), as
plain functions of bytes and records: activation, errors, and the authorization (AuthZ) calls
translated to and from the hook records of ``powerstrip.hooks.wire``.

The facts come from the Engine's plugin documentation (``docs/extend/plugin_api.md``,
``plugins_authorization.md``) and its Go types (``pkg/authorization/api.go``): every call is an
HTTP POST of a JSON object to ``/KIND.METHOD`` on the plugin's socket; an answer is a JSON object,
and a failure any status with ``{"Err": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from powerstrip.core.canonical import AmbiguousBody, body_shape, canonical_body
from powerstrip.core.certificates import certificate_from_pem
from powerstrip.core.identity import Certificate, Client
from powerstrip.core.media import is_json
from powerstrip.hooks.wire import ClientRequest, ServerResponse

#: The content type dockerd sends plugin calls with and accepts answers in.
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

ACTIVATE = "/Plugin.Activate"
AUTHZ_REQUEST = "/AuthZPlugin.AuthZReq"
AUTHZ_RESPONSE = "/AuthZPlugin.AuthZRes"

#: The names a plugin lists in ``Implements`` for the kinds the SDK serves.
AUTHZ = "authz"
VOLUME_DRIVER = "VolumeDriver"
IPAM_DRIVER = "IpamDriver"

#: What dockerd says a user authenticated by a TLS client certificate was authenticated by.
TLS_AUTHN = "TLS"


class PluginCallError(ValueError):
    """A plugin call that does not follow the protocol; the message says what is wrong."""


def activate_answer(implements: Sequence[str]) -> dict[str, Any]:
    """The answer to ``/Plugin.Activate``: the kinds of calls this plugin serves."""
    return {"Implements": list(implements)}


def error_answer(message: str) -> dict[str, Any]:
    """A failed call's answer, in Docker's convention (sent with a non-2xx status)."""
    return {"Err": message}


def read_object(payload: bytes, what: str) -> dict[str, Any]:
    """A call's or an answer's JSON object (an empty payload is an empty object, as dockerd
    sends ``/Plugin.Activate``)."""
    if not payload.strip():
        return {}
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PluginCallError(f"{what} is not JSON ({exc})") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise PluginCallError(f"{what} is a JSON {type(document).__name__}, not an object")
    return document


# --- authorization --------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthZCall:
    """An ``AuthZReq`` or ``AuthZRes`` call as dockerd sends it (``authorization.Request``):
    ``body`` and ``response_body`` are the raw bytes (base64 on the wire), ``peer_certificates``
    the client's TLS certificates as PEM text."""

    user: str
    authn_method: str
    method: str
    uri: str
    body: bytes | None
    headers: Mapping[str, str]
    peer_certificates: tuple[str, ...] = ()
    response_code: int | None = None
    response_body: bytes | None = None
    response_headers: Mapping[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The call's JSON object, with Docker's field names (empty fields left out, as Go's
        ``omitempty`` leaves them)."""
        document: dict[str, Any] = {}
        for name, value in (("User", self.user), ("UserAuthNMethod", self.authn_method),
                            ("RequestMethod", self.method), ("RequestUri", self.uri)):
            if value:
                document[name] = value
        if self.body:
            document["RequestBody"] = base64.b64encode(self.body).decode("ascii")
        if self.headers:
            document["RequestHeaders"] = dict(self.headers)
        if self.peer_certificates:
            document["RequestPeerCertificates"] = list(self.peer_certificates)
        if self.response_code:
            document["ResponseStatusCode"] = self.response_code
        if self.response_body:
            document["ResponseBody"] = base64.b64encode(self.response_body).decode("ascii")
        if self.response_headers:
            document["ResponseHeaders"] = dict(self.response_headers)
        return document


def _bytes_field(document: dict[str, Any], name: str) -> bytes | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PluginCallError(f"{name} must be base64 text, not {json.dumps(value)[:40]}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PluginCallError(f"{name} is not base64") from None


def _headers_field(document: dict[str, Any], name: str) -> dict[str, str]:
    value = document.get(name) or {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PluginCallError(f"{name} must be an object of header names to strings")
    return value


def read_authz_call(payload: bytes) -> AuthZCall:
    """An ``AuthZReq``/``AuthZRes`` call's record; PluginCallError for one that is malformed."""
    document = read_object(payload, "AuthZ call")
    strings = {}
    for name in ("User", "UserAuthNMethod", "RequestMethod", "RequestUri"):
        value = document.get(name) or ""
        if not isinstance(value, str):
            raise PluginCallError(f"{name} must be a string")
        strings[name] = value
    certificates = document.get("RequestPeerCertificates") or []
    if not isinstance(certificates, list) or not all(isinstance(c, str) for c in certificates):
        raise PluginCallError("RequestPeerCertificates must be a list of PEM texts")
    code = document.get("ResponseStatusCode")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise PluginCallError("ResponseStatusCode must be a number")
    return AuthZCall(
        strings["User"], strings["UserAuthNMethod"], strings["RequestMethod"],
        strings["RequestUri"], _bytes_field(document, "RequestBody"),
        _headers_field(document, "RequestHeaders"), tuple(certificates), code or None,
        _bytes_field(document, "ResponseBody"),
        _headers_field(document, "ResponseHeaders") if "ResponseHeaders" in document else None)


def authz_answer(allow: bool, message: str = "") -> dict[str, Any]:
    """An AuthZ plugin's verdict (``authorization.Response``)."""
    answer: dict[str, Any] = {"Allow": allow}
    if message:
        answer["Msg"] = message
    return answer


@dataclass(frozen=True)
class AuthZVerdict:
    """An AuthZ plugin's answer as read: allowed or not, its message, or the error it gave."""

    allow: bool
    message: str
    error: str


def read_authz_answer(payload: bytes) -> AuthZVerdict:
    """An AuthZ plugin's answer; PluginCallError when it is not one."""
    document = read_object(payload, "AuthZ answer")
    allow = document.get("Allow", False)
    message = document.get("Msg") or ""
    error = document.get("Err") or ""
    if not isinstance(allow, bool) or not isinstance(message, str) or not isinstance(error, str):
        raise PluginCallError("an AuthZ answer has a boolean Allow and string Msg and Err")
    return AuthZVerdict(allow, message, error)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def client_of(call: AuthZCall) -> Client:
    """Who dockerd says sent the request. dockerd authenticates clients only by TLS client
    certificates (``--tlsverify``), and then names the certificate's common name as ``User``;
    a request on its unix socket or plain TCP comes with no user."""
    if call.user and call.authn_method == TLS_AUTHN:
        certificate = (certificate_from_pem(call.peer_certificates[0]) if call.peer_certificates
                       else None)
        if certificate is None:
            certificate = Certificate(f"CN={call.user}", call.user, (), "")
        return Client("tls", "dockerd", certificate=certificate)
    if call.user:
        # An authentication plugin of dockerd's named the user: the name is all there is.
        return Client("unix", "dockerd", user=call.user)
    return Client("unix", "dockerd")


#: Methods whose requests carry a body the daemon reads.
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


def hidden_body(call: AuthZCall) -> str | None:
    """Why dockerd may have read a JSON body it did not show the plugin, or None.

    dockerd shows a body only when its Content-Type is exactly ``application/json`` and, before
    20.10's fix for CVE-2024-41110, only when the request said its length; a chunked body, or
    one over 1 MiB, reaches the daemon unseen. A policy that saw no body would judge a request
    it does not know, so such a request is refused (fail closed).
    """
    if call.body or call.method.upper() not in _BODY_METHODS:
        return None
    length = _header(call.headers, "Content-Length")
    if length is not None and length.strip() == "0":
        return None
    content_type = _header(call.headers, "Content-Type")
    if content_type is None or not is_json(content_type):
        return None
    return ("dockerd did not show the authorization plugin this request's JSON body (sent "
            "chunked, or larger than 1 MiB); refused, since the body is what the rules judge")


def authz_request(call: AuthZCall) -> ClientRequest:
    """The request of an AuthZ call as a pre-hook would be shown it: a JSON body as text in the
    spelling the daemon decodes; any other body, as for hooks, not shown. AmbiguousBody for a
    JSON body the daemon could read two ways (refused, as the proxy refuses it)."""
    text: str | None = None
    if call.body and is_json(_header(call.headers, "Content-Type")):
        text = call.body.decode("utf-8", "replace")
        text = canonical_body(body_shape(call.method, call.uri), text).text
    headers = tuple(call.headers.items())
    return ClientRequest(call.method, call.uri, text, headers=headers)


def authz_response(call: AuthZCall) -> ServerResponse:
    """The daemon's response of an ``AuthZRes`` call as a post-hook would be shown it."""
    headers = call.response_headers or {}
    content_type = _header(headers, "Content-Type")
    body: str | None = None
    if call.response_body is not None:
        body = call.response_body.decode("utf-8", "replace")
    return ServerResponse(content_type, body if body is not None else "",
                          call.response_code or 200, tuple(headers.items()))


def authz_call_for(request: ClientRequest, client: Client, body: bytes | None,
                   response: ServerResponse | None = None) -> AuthZCall:
    """The AuthZ call dockerd would send a plugin for ``request`` (and for ``response``, an
    ``AuthZRes``): the proxy calls Docker's AuthZ plugins with it. ``body`` is the request body
    as sent, shown only when it is JSON, as dockerd shows it."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        if name.lower() in ("authorization", "x-registry-auth", "x-registry-config"):
            continue  # dockerd leaves these out of every AuthZ call
        headers[name] = value  # dockerd's flattening: the last value of a header wins
    user, method = "", ""
    if client.certificate is not None and client.certificate.common_name:
        user, method = client.certificate.common_name, TLS_AUTHN
    shown = body if body and is_json(_header(headers, "Content-Type")) else None
    call = AuthZCall(user, method, request.method, request.request, shown, headers)
    if response is None:
        return call
    response_headers = {name: value for name, value in response.headers}
    response_body = None
    if response.body is not None and is_json(response.content_type):
        response_body = response.body.encode("utf-8")
    return AuthZCall(call.user, call.authn_method, call.method, call.uri, call.body,
                     call.headers, (), response.code, response_body, response_headers)


__all__ = [
    "ACTIVATE", "AUTHZ", "AUTHZ_REQUEST", "AUTHZ_RESPONSE", "CONTENT_TYPE", "IPAM_DRIVER",
    "TLS_AUTHN", "VOLUME_DRIVER", "AmbiguousBody", "AuthZCall", "AuthZVerdict",
    "PluginCallError", "activate_answer", "authz_answer", "authz_call_for", "authz_request",
    "authz_response", "client_of", "error_answer", "hidden_body", "read_authz_answer",
    "read_authz_call", "read_object",
]
