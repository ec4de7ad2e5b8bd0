"""What the proxy reports: the numbers and their Prometheus form, audit lines and the trace."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from powerstrip.core.identity import Certificate, Client
from powerstrip.hooks.wire import ClientRequest, ServerResponse
from powerstrip.observe.audit import AuditLog
from powerstrip.observe.prometheus import registry_for, render
from powerstrip.observe.records import (
    HookRecord,
    RequestRecord,
    audit_line,
    changed_fields,
    redact_document,
)
from powerstrip.observe.stats import BUCKETS, Histogram, Stats
from powerstrip.observe.trace import Trace

ALICE = Client("unix", "/run/ps.sock", 1001, 1001, 42, "alice", ("alice",))


def samples(stats: Stats) -> dict[tuple[str, frozenset], float]:
    text = render(registry_for(stats)).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_every_documented_metric_is_exported_with_its_labels():
    stats = Stats()
    stats.request("POST", "POST /*/containers/create", 403, 0.002)
    stats.hook("policy", "pre", "refused", 0.001)
    stats.connections_open["unix:///run/ps.sock"] = 2
    stats.config = ("/etc/powerstrip/adapters.yml", "ab" * 32)
    names = {name for name, _ in samples(stats)}
    for name in ("powerstrip_requests_total", "powerstrip_request_duration_seconds_bucket",
                 "powerstrip_request_duration_seconds_sum", "powerstrip_hook_calls_total",
                 "powerstrip_hook_duration_seconds_count", "powerstrip_connections_open",
                 "powerstrip_hijacked_open", "powerstrip_streams_open", "powerstrip_bytes_total",
                 "powerstrip_config_reloads_total", "powerstrip_config_info",
                 "powerstrip_audit_errors_total"):
        assert name in names, name
    found = samples(stats)
    assert found[("powerstrip_requests_total", frozenset(
        {"method": "POST", "endpoint": "POST /*/containers/create", "code": "403"}.items()))] == 1
    assert found[("powerstrip_hook_calls_total", frozenset(
        {"adapter": "policy", "phase": "pre", "outcome": "refused"}.items()))] == 1
    assert found[("powerstrip_config_info", frozenset(
        {"path": "/etc/powerstrip/adapters.yml", "sha256": "ab" * 32}.items()))] == 1


def test_the_gauges_are_refreshed_when_scraped():
    stats = Stats()
    calls = []
    stats.refresh = lambda: (calls.append(1), setattr(stats, "hijacked_open", 3))
    assert samples(stats)[("powerstrip_hijacked_open", frozenset())] == 3
    assert calls == [1]


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=50))
def test_a_histogram_counts_as_prometheus_reads_it(values):
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    cumulative = histogram.cumulative()
    assert cumulative[-1] == ("+Inf", len(values))
    for (bound, count), limit in zip(cumulative, BUCKETS, strict=False):
        assert count == sum(1 for v in values if v <= limit), bound
    assert histogram.total == pytest.approx(sum(values))


def test_changed_fields_name_fields_and_body_keys_never_values():
    before = ClientRequest("POST", "/v1.41/containers/create",
                           json.dumps({"Image": "busybox", "Env": ["SECRET=1"]}))
    after = ClientRequest("POST", "/v1.41/containers/create?name=x",
                          json.dumps({"Image": "busybox", "Env": ["SECRET=2"], "Labels": {}}),
                          headers=(("X-A", "1"),))
    assert changed_fields(before, after) == ("Request", "Body.Env", "Body.Labels", "Headers")
    response = ServerResponse("application/json", "{}", 200)
    assert changed_fields(response, ServerResponse("text/plain", "x", 201)) == (
        "Code", "ContentType", "Body")


def record() -> RequestRecord:
    return RequestRecord(
        1796241234.5, "abc-1", ALICE, "POST", "/v1.41/containers/create?name=web",
        "/containers/create", "POST /*/containers/create",
        [HookRecord("policy", "pre", "refused", 1.25, (), "privileged containers are not allowed")],
        403, 120, 80, 0.004, 0.004)


def test_an_audit_line_has_who_what_and_how_it_ended():
    line = audit_line(record())
    assert line["time"].endswith("Z") and line["time"][10] == "T"
    assert line["client"] == {"transport": "unix", "address": "/run/ps.sock", "uid": 1001,
                              "user": "alice"}
    assert line["hooks"] == [{"adapter": "policy", "phase": "pre", "outcome": "refused",
                              "ms": 1.25, "changed": [],
                              "message": "privileged containers are not allowed"}]
    assert (line["method"], line["target"], line["path"], line["endpoint"], line["status"]) == (
        "POST", "/v1.41/containers/create?name=web", "/containers/create",
        "POST /*/containers/create", 403)
    assert (line["bytes_in"], line["bytes_out"], line["ms"]) == (120, 80, 4.0)
    tls = audit_line(RequestRecord(0, None, Client("tls", "1.2.3.4:5", certificate=Certificate(
        "CN=bob", "bob", (), "00")), "GET", "/_ping", "/_ping", ""))
    assert tls["client"]["common_name"] == "bob"


def test_the_trace_redacts_credentials_and_env_and_cuts_bodies():
    document = {"ClientRequest": {
        "Body": json.dumps({"Image": "busybox", "Env": ["PASSWORD=hunter2", "X"]}),
        "Headers": {"X-Registry-Auth": ["c2VjcmV0"], "User-Agent": ["d"]}}}
    shown = redact_document(document, 10_000)
    text = json.dumps(shown)
    assert "hunter2" not in text and "c2VjcmV0" not in text
    assert "PASSWORD=<redacted>" in shown["ClientRequest"]["Body"]
    assert shown["ClientRequest"]["Headers"]["User-Agent"] == ["d"]
    cut = redact_document({"ClientRequest": {"Body": "x" * 100}}, 10)
    assert cut["ClientRequest"]["Body"].startswith("x" * 10 + "... (90 more")


def test_the_trace_keeps_the_last_n_and_tells_its_watchers():
    trace = Trace(size=3)
    assert not trace.watched
    seen = []
    handle = trace.watch(seen.append)
    assert trace.watched
    for _ in range(5):
        trace.add(record())
    assert [e["seq"] for e in trace.events] == [3, 4, 5]
    assert len(seen) == 5 and seen[-1]["client"]["name"] == "unix user alice (uid 1001)"
    trace.unwatch(handle)
    assert not trace.watched


def test_an_audit_log_that_cannot_be_written_counts_and_goes_on(tmp_path, caplog):
    stats = Stats()
    path = tmp_path / "audit.log"
    audit = AuditLog(str(path), stats)
    audit.write({"n": 1})
    # Where writes fail as on a full disk.
    audit._file.close()
    audit._file = open("/dev/full", "w")  # noqa: SIM115
    audit.write({"n": 2})
    audit.write({"n": 3})
    assert stats.audit_errors == 2
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1
    # logrotate: the file is moved away, then SIGHUP reopens a new one.
    os.rename(path, tmp_path / "audit.log.1")
    audit.reopen()
    audit.write({"n": 4})
    assert [json.loads(x) for x in (tmp_path / "audit.log.1").read_text().splitlines()] == [
        {"n": 1}]
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"n": 4}]
