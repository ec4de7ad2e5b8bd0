"""Where the proxy reports what it does: the numbers always, the audit log and the live trace
when they are on. One per proxy process."""

from __future__ import annotations

from powerstrip.observe.audit import AuditLog
from powerstrip.observe.records import RequestRecord, audit_line
from powerstrip.observe.stats import Stats
from powerstrip.observe.trace import Trace


class Observer:
    """The stats, and the audit log and trace when configured (None otherwise)."""

    def __init__(self, stats: Stats | None = None, audit: AuditLog | None = None,
                 trace: Trace | None = None) -> None:
        self.stats = stats if stats is not None else Stats()
        self.audit = audit
        self.trace = trace

    @property
    def records(self) -> bool:
        """Whether requests need a full record (an audit log, or someone on the trace)."""
        return self.audit is not None or (self.trace is not None and self.trace.watched)

    @property
    def payloads(self) -> bool:
        """Whether hook payloads are kept (someone is on the trace)."""
        return self.trace is not None and self.trace.watched

    def request_ended(self, record: RequestRecord) -> None:
        """A full record of a request that ended (the stats have counted it already)."""
        if self.audit is not None:
            self.audit.write(audit_line(record))
        if self.trace is not None:
            self.trace.add(record)
