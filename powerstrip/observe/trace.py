"""The live trace: the last requests, each with its hooks, for the ``/trace`` page.

Kept in a bounded buffer (``--trace-size``). What each adapter was shown and answered is kept
only while somebody watches: with no page open the trace costs the proxy nothing beyond the
audit's own record.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from powerstrip.observe.records import RequestRecord, client_summary, redact_document

DEFAULT_SIZE = 200
DEFAULT_BODY_LIMIT = 4096


class Trace:
    """The last ``size`` requests as JSON events, and whoever is watching them."""

    def __init__(self, size: int = DEFAULT_SIZE, body_limit: int = DEFAULT_BODY_LIMIT) -> None:
        self.size = size
        self.body_limit = body_limit
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self._watchers: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)

    @property
    def watched(self) -> bool:
        """Whether anyone is watching (the proxy keeps hook payloads only then)."""
        return bool(self._watchers)

    def watch(self, callback: Callable[[dict[str, Any]], None]) -> int:
        """Call ``callback`` with each new event; returns a handle for ``unwatch``."""
        handle = next(self._ids)
        self._watchers[handle] = callback
        return handle

    def unwatch(self, handle: int) -> None:
        """Stop calling the watcher ``handle``."""
        self._watchers.pop(handle, None)

    def add(self, record: RequestRecord) -> None:
        """Keep ``record`` as an event and pass it to every watcher."""
        event = self.event(record)
        self.events.append(event)
        for callback in list(self._watchers.values()):
            callback(event)

    def event(self, record: RequestRecord) -> dict[str, Any]:
        """A request as the page reads it."""
        return {
            "seq": next(self._seq),
            "time": record.time,
            "call": record.call,
            "client": {**client_summary(record.client), "name": record.client.describe()},
            "method": record.method,
            "target": record.target,
            "path": record.path,
            "endpoint": record.endpoint,
            "status": record.status,
            "ms": round(record.duration * 1000, 3),
            "head_ms": None if record.head_seconds is None
            else round(record.head_seconds * 1000, 3),
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "hooks": [{
                "adapter": hook.adapter, "phase": hook.phase, "outcome": hook.outcome,
                "ms": round(hook.ms, 3), "changed": list(hook.changed), "message": hook.message,
                "sent": None if hook.sent is None
                else redact_document(hook.sent, self.body_limit),
                "answer": None if hook.answer is None
                else redact_document(hook.answer, self.body_limit),
            } for hook in record.hooks],
        }
