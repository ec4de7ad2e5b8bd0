"""``Stats`` in Prometheus' text format, through ``prometheus-client``.

A custom collector turns the plain numbers into metric families when ``/metrics`` is scraped,
so the names, label sets and the format itself come from the library; the proxy's hot path
never touches it. The names and labels are an interface: docs/observability.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from powerstrip.observe.stats import Stats

#: The content type of the text format ``render`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsCollector:
    """Reads a ``Stats`` when the registry is collected."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """The metric families, from the numbers as they are now."""
        stats = self.stats
        if stats.refresh is not None:
            stats.refresh()
        family = CounterMetricFamily(
            "powerstrip_requests", "Requests answered, by the adapters-file endpoint key that "
            "matched (\"\" for none) and the status sent to the client.",
            labels=["method", "endpoint", "code"])
        for labels, value in sorted(stats.requests.items()):
            family.add_metric(list(labels), value)
        yield family
        yield _histogram(
            "powerstrip_request_duration_seconds",
            "Time from a request's head to its response's head.",
            ["method", "endpoint"], stats.request_durations)
        family = CounterMetricFamily(
            "powerstrip_hook_calls", "Hook calls, by adapter, phase (pre, post) and outcome "
            "(ok, refused, timeout, unreachable, bad_answer, skipped).",
            labels=["adapter", "phase", "outcome"])
        for labels, value in sorted(stats.hook_calls.items()):
            family.add_metric(list(labels), value)
        yield family
        yield _histogram(
            "powerstrip_hook_duration_seconds", "Time a hook call took, answer or not.",
            ["adapter", "phase"], stats.hook_durations)
        family = GaugeMetricFamily(
            "powerstrip_connections_open", "Client connections open, by listener.",
            labels=["listener"])
        for listener, value in sorted(stats.connections_open.items()):
            family.add_metric([listener], value)
        yield family
        yield GaugeMetricFamily("powerstrip_hijacked_open",
                                "Connections hijacked (attach, exec, ...) and open now.",
                                value=stats.hijacked_open)
        yield GaugeMetricFamily("powerstrip_streams_open",
                                "Streamed responses (events, logs -f, ...) in progress now.",
                                value=stats.streams_open)
        family = CounterMetricFamily(
            "powerstrip_bytes", "Bytes passed on, by direction (to_daemon, to_client).",
            labels=["direction"])
        for direction in ("to_daemon", "to_client"):
            family.add_metric([direction], stats.bytes[direction])
        yield family
        family = CounterMetricFamily(
            "powerstrip_upstream_errors", "Failures to reach or keep the daemon, by kind.",
            labels=["kind"])
        for kind, value in sorted(stats.upstream_errors.items()):
            family.add_metric([kind], value)
        yield family
        family = CounterMetricFamily(
            "powerstrip_config_reloads", "Reloads of the adapters file, by result (ok, invalid).",
            labels=["result"])
        for result in ("ok", "invalid"):
            family.add_metric([result], stats.config_reloads[result])
        yield family
        path, digest = stats.config
        yield InfoMetricFamily("powerstrip_config", "The adapters file in force.",
                               value={"path": path, "sha256": digest})
        yield CounterMetricFamily("powerstrip_audit_errors",
                                  "Audit lines that could not be written.",
                                  value=stats.audit_errors)


def _histogram(name: str, documentation: str, labels: list[str],
               histograms: dict) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, histogram in sorted(histograms.items()):
        family.add_metric(list(key), histogram.cumulative(), histogram.total)
    return family


def registry_for(stats: Stats) -> CollectorRegistry:
    """A registry of ``stats`` alone (not the process-wide default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text format of everything in ``registry``."""
    return generate_latest(registry)
