"""A small client of etcd's v3 JSON gateway (``/v3/kv/*``, ``/v3/lease/*``), with treq, for
adapters that keep their state in etcd (``--state etcd://HOST:PORT``).

Why the gateway and treq rather than an etcd library: the gateway is part of every etcd 3.x
(Debian's ``etcd-server`` included), speaks plain JSON over HTTP, and treq calls it without
blocking the reactor the adapter serves hooks from; the maintained Python etcd clients are
gRPC-based and block, or need an event loop of their own. Keys and values are bytes on the wire
as base64, as the gateway wants them; this module takes and gives ``str``.

Every call fails with ``StoreUnavailable`` naming the store when no endpoint answers, so that
an adapter can refuse with 503 naming it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import treq


class StoreUnavailable(Exception):
    """No endpoint of the store answered; the message names them and the cause."""


@dataclass(frozen=True)
class Entry:
    """A key's value and revisions, as etcd keeps them (``lease`` 0 when it has none)."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int = 0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _text(data: str) -> str:
    return base64.b64decode(data).decode()


def _prefix_end(prefix: str) -> str:
    """The end of the range of keys starting with ``prefix`` (etcd's ``range_end``)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


def _entry(kv: dict[str, Any]) -> Entry:
    return Entry(_text(kv["key"]), _text(kv.get("value", "")), int(kv.get("create_revision", 0)),
                 int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))


def parse_endpoints(url: str) -> list[str]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` as the gateway URLs to try, in order."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r} is not an etcd://HOST:PORT[,HOST:PORT...] address")
    hosts = [h for h in url[len("etcd://"):].rstrip("/").split(",") if h]
    if not hosts or any(":" not in h for h in hosts):
        raise ValueError(f"{url!r}: give each endpoint as HOST:PORT")
    return [f"http://{host}" for host in hosts]


# -- comparisons and operations of a transaction (the gateway's JSON forms) --------------------


def created(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was created at ``revision`` (0: it does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": str(revision)}


def modified(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last changed at ``revision``."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    """Operation: set ``key`` (attached to ``lease`` when given)."""
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete(key: str) -> dict[str, Any]:
    """Operation: delete ``key``."""
    return {"request_delete_range": {"key": _b64(key)}}


class Etcd:
    """The gateway of the etcd cluster at ``url`` (``etcd://HOST:PORT[,...]``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.endpoints = parse_endpoints(url)
        self.timeout = timeout

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for endpoint in self.endpoints:
            try:
                response = await treq.post(endpoint + path, json=body, timeout=self.timeout)
                text = await response.content()
            except Exception as exc:  # noqa: BLE001 - any transport failure: try the next
                errors.append(f"{endpoint}: {exc.__class__.__name__}: {exc}".rstrip(": "))
                continue
            if response.code != 200:
                errors.append(f"{endpoint}: {response.code} {text[:200]!r}")
                continue
            return json.loads(text)
        raise StoreUnavailable(f"etcd at {self.url} unreachable ({'; '.join(errors)})")

    async def get(self, key: str) -> Entry | None:
        """``key``'s entry, None if there is none."""
        answer = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    async def prefix(self, prefix: str) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, by key."""
        answer = await self._call("/v3/kv/range", {"key": _b64(prefix),
                                                   "range_end": _prefix_end(prefix)})
        return [_entry(kv) for kv in answer.get("kvs") or []]

    async def put(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``."""
        await self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
                  failure: Sequence[dict[str, Any]] = ()) -> bool:
        """Do ``success`` if every comparison holds, else ``failure``; whether they held."""
        answer = await self._call("/v3/kv/txn", {"compare": list(compare),
                                                 "success": list(success),
                                                 "failure": list(failure)})
        return bool(answer.get("succeeded"))

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> bool:
        """Renew ``lease``; False if it has expired."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result") or {}
        return int(result.get("TTL", 0)) > 0

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting the keys attached to it."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

