"""What the audit log and the live trace keep of a request: plain records, built by the proxy
as a request goes through its hooks and the daemon, and their JSON forms."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from powerstrip.core.identity import Client
from powerstrip.hooks.wire import CREDENTIAL_HEADERS, REDACTED, ClientRequest, ServerResponse

#: The request's and response's fields, as the wire names them.
_REQUEST_FIELDS = (("Method", "method"), ("Request", "request"), ("Body", "body"),
                   ("Headers", "headers"))
_RESPONSE_FIELDS = (("Code", "code"), ("ContentType", "content_type"), ("Body", "body"),
                    ("Headers", "headers"))


@dataclass
class HookRecord:
    """One hook call: which adapter, in which phase, how it ended, how long it took, which
    fields it changed (names only), and the adapter's message for a refusal or failure.

    ``sent`` and ``answer`` (what it was shown and what it answered, as the wire carries them)
    are kept only while someone watches the live trace.
    """

    adapter: str
    phase: str
    outcome: str
    ms: float
    changed: tuple[str, ...] = ()
    message: str | None = None
    sent: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None


@dataclass
class RequestRecord:
    """One request from its head to its end."""

    time: float
    call: str | None
    client: Client
    method: str
    target: str
    path: str
    endpoint: str
    hooks: list[HookRecord] = field(default_factory=list)
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration: float = 0.0
    head_seconds: float | None = None


def changed_fields(before: ClientRequest | ServerResponse,
                   after: ClientRequest | ServerResponse) -> tuple[str, ...]:
    """The fields a hook changed, by their wire names; for a JSON body, its top-level keys as
    ``Body.KEY`` (names only: values such as ``Env`` never leave here)."""
    pairs = _REQUEST_FIELDS if isinstance(before, ClientRequest) else _RESPONSE_FIELDS
    changed: list[str] = []
    for wire_name, attribute in pairs:
        old, new = getattr(before, attribute), getattr(after, attribute)
        if old == new:
            continue
        if attribute == "body":
            keys = _changed_keys(old, new)
            if keys is not None:
                changed.extend(f"Body.{key}" for key in keys)
                continue
        changed.append(wire_name)
    return tuple(changed)


def _changed_keys(old: str | None, new: str | None) -> list[str] | None:
    try:
        a, b = json.loads(old or "null"), json.loads(new or "null")
    except ValueError:
        return None
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    return sorted(key for key in a.keys() | b.keys()
                  if a.get(key, _MISSING) != b.get(key, _MISSING))


_MISSING = object()


def client_summary(client: Client) -> dict[str, Any]:
    """Who the client was, for the audit log: transport, address, and the user or the
    certificate's name when known."""
    summary: dict[str, Any] = {"transport": client.transport, "address": client.address}
    if client.uid is not None:
        summary["uid"] = client.uid
        summary["user"] = client.user
    if client.certificate is not None:
        summary["common_name"] = client.certificate.common_name
        summary["subject"] = client.certificate.subject
    return summary


def audit_line(record: RequestRecord) -> dict[str, Any]:
    """The audit log's JSON object for a request (docs/observability.md has its schema). It
    holds names, numbers and outcomes, never a body, a header value or a credential."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.time))
                + f".{int(record.time % 1 * 1000):03d}Z",
        "call": record.call,
        "client": client_summary(record.client),
        "method": record.method,
        "target": record.target,
        "path": record.path,
        "endpoint": record.endpoint,
        "hooks": [{"adapter": hook.adapter, "phase": hook.phase, "outcome": hook.outcome,
                   "ms": round(hook.ms, 3), "changed": list(hook.changed),
                   **({"message": hook.message} if hook.message else {})}
                  for hook in record.hooks],
        "status": record.status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "ms": round(record.duration * 1000, 3),
    }


def redact_document(document: dict[str, Any], body_limit: int) -> dict[str, Any]:
    """A hook call or answer as the live trace shows it: credential headers redacted, each
    ``Body`` cut at ``body_limit`` characters, and ``Env`` values in a JSON body hidden."""
    shown = {}
    for key, value in document.items():
        if isinstance(value, dict) and key in ("ClientRequest", "ServerResponse",
                                               "ModifiedClientRequest", "ModifiedServerResponse"):
            value = dict(value)
            headers = value.get("Headers")
            if isinstance(headers, dict):
                value["Headers"] = {name: ([REDACTED] if name in CREDENTIAL_HEADERS else values)
                                    for name, values in headers.items()}
            body = value.get("Body")
            if isinstance(body, str):
                value["Body"] = _shown_body(body, body_limit)
        shown[key] = value
    return shown


def _shown_body(body: str, limit: int) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("Env"), list):
        parsed["Env"] = [f"{item.partition('=')[0]}={REDACTED}" if isinstance(item, str)
                         else REDACTED for item in parsed["Env"]]
        body = json.dumps(parsed, indent=1)
    elif parsed is not None:
        body = json.dumps(parsed, indent=1)
    if len(body) > limit:
        return body[:limit] + f"... ({len(body) - limit} more characters)"
    return body
