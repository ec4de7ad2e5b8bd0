"""The proxy's counters, gauges and histograms, kept as plain numbers.

The hot path only adds to dictionaries and integers here: a request that no hook sees costs a
few hundred nanoseconds more, not a Prometheus client's label lookup and lock. The numbers take
their Prometheus form only when scraped (``powerstrip.observe.prometheus``). Everything runs in
the reactor's thread, so nothing here locks.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the duration histograms' buckets: from a fast local answer to an
#: adapter that moves data.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)

#: The outcomes of a hook call, the ``outcome`` label's values.
HOOK_OUTCOMES = ("ok", "refused", "timeout", "unreachable", "bad_answer", "skipped")


@dataclass
class Histogram:
    """Counts per bucket (not cumulative), their sum, and how many."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus reads them, ``+Inf`` last."""
        pairs = []
        running = 0
        for bound, count in zip((*map(_float, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


def _float(value: float) -> str:
    return repr(float(value))


class Stats:
    """Every number ``/metrics`` shows; see docs/observability.md for each one's meaning."""

    def __init__(self) -> None:
        #: (method, endpoint, code) -> requests.
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        #: (method, endpoint) -> time to the response head.
        self.request_durations: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
        #: (adapter, phase, outcome) -> hook calls.
        self.hook_calls: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        #: (adapter, phase) -> hook call durations.
        self.hook_durations: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
        #: listener -> open client connections.
        self.connections_open: defaultdict[str, int] = defaultdict(int)
        self.hijacked_open = 0
        self.streams_open = 0
        #: direction ("to_daemon", "to_client") -> bytes.
        self.bytes: defaultdict[str, int] = defaultdict(int)
        #: kind -> errors reaching the daemon.
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)
        #: result ("ok", "invalid") -> configuration reloads.
        self.config_reloads: defaultdict[str, int] = defaultdict(int)
        #: The configuration in force: its path and the SHA-256 of its bytes.
        self.config: tuple[str, str] = ("", "")
        #: Audit lines that could not be written.
        self.audit_errors = 0
        #: Brings the gauges and byte counts up to date before they are read (the proxy sets
        #: it: they are read off the open connections, not kept on the hot path).
        self.refresh: Callable[[], None] | None = None

    def request(self, method: str, endpoint: str, code: int, seconds: float | None) -> None:
        """A request ended with ``code``; ``seconds`` to its response head (None: no head)."""
        self.requests[(method, endpoint, str(code))] += 1
        if seconds is not None:
            self.request_durations[(method, endpoint)].observe(seconds)

    def hook(self, adapter: str, phase: str, outcome: str, seconds: float) -> None:
        """A hook call ended with ``outcome`` (one of ``HOOK_OUTCOMES``) after ``seconds``."""
        self.hook_calls[(adapter, phase, outcome)] += 1
        self.hook_durations[(adapter, phase)].observe(seconds)
