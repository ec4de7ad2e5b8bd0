"""Metrics, the audit log and the health endpoints of ``powerstrip serve --admin --audit-log``,
with the real docker CLI through a real chain of hooks: an answer, a refusal, a timeout, an
adapter that is not there, and one skipped (``on_error: skip``). The counters move by exactly
what happened, and the audit log has one line per request saying so, with no secret in it."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from powerstrip_dev.processes import ProxyService, start_proxy, stop_process
from tests.e2e.conftest import docker, ok, wait_for
from tests.e2e.test_hooks import HookAdapter, adapter, adapters_file  # noqa: F401
from tests.rawhttp import call

pytestmark = pytest.mark.timeout(180)

SECRET = "hunter2-not-for-logs"


@pytest.fixture(scope="module")
def observed(engine, adapter) -> Iterator[dict[str, Any]]:  # noqa: F811
    directory = Path(tempfile.mkdtemp(prefix="ps-obs-"))
    config = directory / "adapters.yml"
    config.write_text(adapters_file(
        {
            "GET /*/version": {"pre": ["fine"]},
            "POST /*/containers/create": {"pre": ["fine", "refuser"]},
            "GET /*/containers/*/json": {"pre": ["sleepy"]},
            "GET /*/containers/json": {"pre": ["gone"]},
            "GET /*/images/json": {"pre": ["gone_skip", "fine"]},
        },
        {
            "fine": adapter.url("/null"),
            "refuser": adapter.url("/refuse?status=403&message=no+containers+today"),
            "sleepy": {"url": adapter.url("/slow?seconds=3"), "timeout": 0.5},
            "gone": "http://127.0.0.1:1/",
            "gone_skip": {"url": "http://127.0.0.1:1/", "on_error": "skip"},
        },
    ))
    audit = directory / "audit.log"
    proxy = start_proxy(engine.host, "--admin", "tcp://127.0.0.1:0", "--audit-log", str(audit),
                        logdir=directory, config=config, name="observed")
    match = None

    def admin_line() -> bool:
        nonlocal match
        match = re.search(r"admin listener: (http://\S+?)/? ", proxy.log())
        return match is not None

    assert wait_for(admin_line, 10), proxy.log()
    try:
        yield {"proxy": proxy, "admin": match.group(1).rstrip("/"), "audit": audit,
               "directory": directory}
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
        shutil.rmtree(directory, ignore_errors=True)


def scrape(admin: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_counters_and_audit_lines_follow_each_command(engine, observed) -> None:
    proxy: ProxyService = observed["proxy"]
    host, admin, audit = proxy.docker_host, observed["admin"], observed["audit"]
    before = scrape(admin)
    lines_before = len(audit_lines(audit))
    name = f"ps-obs-{uuid.uuid4().hex[:8]}"
    ok(docker(host, "version"))
    refused = docker(host, "run", "--rm", "--name", name, "-e", f"PASSWORD={SECRET}",
                     "busybox", "true")
    assert refused.returncode != 0 and b"no containers today" in refused.stderr
    ok(docker(engine.host, "create", "--name", name, "busybox", "true"))  # direct, unhooked
    try:
        slow = docker(host, "inspect", name)
        assert slow.returncode != 0 and b"timed out after 0.5 s" in slow.stderr, slow.stderr
        gone = docker(host, "ps")
        assert gone.returncode != 0 and b"unreachable" in gone.stderr
        ok(docker(host, "images"))
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")

    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "powerstrip_requests_total"
    assert delta(requests, method="GET", endpoint="GET /*/version", code="200") == 1
    assert delta(requests, method="POST", endpoint="POST /*/containers/create", code="403") == 1
    assert delta(requests, method="GET", endpoint="GET /*/containers/*/json", code="504") == 1
    assert delta(requests, method="GET", endpoint="GET /*/containers/json", code="502") == 1
    assert delta(requests, method="GET", endpoint="GET /*/images/json", code="200") == 1
    hooks = "powerstrip_hook_calls_total"
    # fine: version, create, images; refused: create; the rest once each.
    assert delta(hooks, adapter="fine", phase="pre", outcome="ok") == 3
    assert delta(hooks, adapter="refuser", phase="pre", outcome="refused") == 1
    assert delta(hooks, adapter="sleepy", phase="pre", outcome="timeout") == 1
    assert delta(hooks, adapter="gone", phase="pre", outcome="unreachable") == 1
    assert delta(hooks, adapter="gone_skip", phase="pre", outcome="skipped") == 1
    assert delta("powerstrip_hook_duration_seconds_count", adapter="sleepy", phase="pre") == 1
    assert value(after, "powerstrip_hook_duration_seconds_sum", adapter="sleepy",
                 phase="pre") - value(before, "powerstrip_hook_duration_seconds_sum",
                                      adapter="sleepy", phase="pre") >= 0.5
    assert delta("powerstrip_request_duration_seconds_count", method="GET",
                 endpoint="GET /*/version") == 1
    assert delta("powerstrip_bytes_total", direction="to_client") > 0
    assert delta("powerstrip_bytes_total", direction="to_daemon") > 0
    assert value(after, "powerstrip_hijacked_open") == 0

    lines = audit_lines(audit)[lines_before:]
    text = audit.read_text()
    assert SECRET not in text  # Env values never appear
    by_endpoint = {line["endpoint"]: line for line in lines if line["endpoint"]}
    create = by_endpoint["POST /*/containers/create"]
    assert create["status"] == 403 and create["method"] == "POST"
    assert re.fullmatch(r"/v1\.\d+/containers/create", create["path"]), create["path"]
    assert re.fullmatch(r"/v1\.\d+/containers/create\?name=" + name, create["target"])
    assert [(h["adapter"], h["outcome"]) for h in create["hooks"]] == [
        ("fine", "ok"), ("refuser", "refused")]
    assert "no containers today" in create["hooks"][1]["message"]
    assert create["client"]["transport"] == "tcp"
    assert create["client"]["address"].startswith("127.0.0.1:")
    assert create["call"] and create["bytes_in"] == 0 and create["bytes_out"] > 0
    assert [(h["adapter"], h["outcome"]) for h in
            by_endpoint["GET /*/containers/*/json"]["hooks"]] == [("sleepy", "timeout")]
    assert by_endpoint["GET /*/containers/*/json"]["status"] == 504
    assert [(h["adapter"], h["outcome"]) for h in
            by_endpoint["GET /*/images/json"]["hooks"]] == [("gone_skip", "skipped"),
                                                            ("fine", "ok")]
    assert by_endpoint["GET /*/version"]["bytes_in"] > 0  # it reached the daemon
    # Every request of these commands has its line, unhooked ones (_ping) included.
    assert any(line["path"].endswith("/_ping") and line["endpoint"] == "" for line in lines)


def test_health_and_readiness(observed) -> None:
    admin = observed["admin"]
    with urllib.request.urlopen(f"{admin}/healthz", timeout=10) as answer:
        assert answer.status == 200
    # Two adapters of the running configuration are not there: not ready, naming them.
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(f"{admin}/readyz", timeout=10)
    assert failed.value.code == 503
    down = json.loads(failed.value.read())["down"]
    assert set(down) == {"adapter gone", "adapter gone_skip"}, down


def test_ready_when_the_daemon_and_every_adapter_answer(engine, adapter, tmp_path) -> None:  # noqa: F811
    config = tmp_path / "adapters.yml"
    config.write_text(adapters_file({"GET /*/version": {"pre": ["fine"]}},
                                    {"fine": adapter.url("/null")}))
    proxy = start_proxy(engine.host, "--admin", "tcp://127.0.0.1:0", logdir=tmp_path,
                        config=config, name="ready")
    try:
        assert wait_for(lambda: "admin listener: " in proxy.log(), 10)
        url = re.search(r"admin listener: (http://\S+?)/? ", proxy.log()).group(1)
        with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=10) as answer:
            assert answer.status == 200
            assert json.loads(answer.read())["checked"] == ["daemon", "adapter fine"]
    finally:
        assert stop_process(proxy.proc) == 0
    # A daemon that is not there: 503 naming it.
    proxy = start_proxy(f"unix://{tmp_path / 'nobody.sock'}", "--admin", "tcp://127.0.0.1:0",
                        logdir=tmp_path / "two", name="unready")
    try:
        assert wait_for(lambda: "admin listener: " in proxy.log(), 10)
        url = re.search(r"admin listener: (http://\S+?)/? ", proxy.log()).group(1)
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=10)
        assert failed.value.code == 503
        assert "nobody.sock" in json.loads(failed.value.read())["down"]["daemon"]
    finally:
        assert stop_process(proxy.proc) == 0


def test_open_connections_streams_and_hijacks_are_gauges(engine, tmp_path) -> None:
    from tests.e2e.conftest import end, popen_docker

    proxy = start_proxy(engine.host, "--admin", "tcp://127.0.0.1:0", logdir=tmp_path,
                        name="gauges")
    assert wait_for(lambda: "admin listener: " in proxy.log(), 10), proxy.log()
    admin = re.search(r"admin listener: (http://\S+?)/? ", proxy.log()).group(1).rstrip("/")
    host = proxy.docker_host
    name = f"ps-obs-i-{uuid.uuid4().hex[:8]}"
    events = popen_docker(host, "events")
    attached = popen_docker(host, "run", "--rm", "-i", "--name", name, "busybox", "cat",
                            stdin=True)
    try:
        def both() -> bool:
            samples = scrape(admin)
            return (value(samples, "powerstrip_streams_open") >= 1
                    and value(samples, "powerstrip_hijacked_open") >= 1)

        assert wait_for(both, 30), scrape(admin)
        # The listener as the printed DOCKER_HOST names it: tcp://127.0.0.1:PORT.
        assert value(scrape(admin), "powerstrip_connections_open", listener=host) >= 2
        attached.stdin.write(b"bye\n")
        attached.stdin.close()
        assert attached.wait(30) == 0 and attached.stdout.read() == b"bye\n"
        end(events)
        assert wait_for(lambda: value(scrape(admin), "powerstrip_hijacked_open") == 0
                        and value(scrape(admin), "powerstrip_streams_open") == 0, 15), \
            scrape(admin)
    finally:
        end(attached)
        end(events)
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")
        assert stop_process(proxy.proc) == 0, proxy.log()


def _read_lines(stream: Any, into: queue.Queue[str]) -> None:
    try:
        for line in iter(stream.readline, b""):
            into.put(line.decode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):
        pass  # the test closed the stream under the reader


def _wait_line(lines: queue.Queue[str], wanted: str, seconds: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if wanted in line:
            return seen
    raise AssertionError(f"no line with {wanted!r} in {seen!r}")


def test_the_trace_stream_shows_what_each_hook_saw_only_while_watched(engine, observed) -> None:
    proxy: ProxyService = observed["proxy"]
    admin = observed["admin"]
    name = f"ps-obs-t-{uuid.uuid4().hex[:8]}"

    def refused_create() -> dict[str, Any]:
        result = docker(proxy.docker_host, "create", "--name", name, "-e",
                        f"PASSWORD={SECRET}", "busybox", "true")
        assert result.returncode != 0 and b"no containers today" in result.stderr
        with urllib.request.urlopen(f"{admin}/trace/recent", timeout=10) as answer:
            kept = json.loads(answer.read())
        return [e for e in kept if e["endpoint"] == "POST /*/containers/create"][-1]

    unwatched = refused_create()
    assert [h["sent"] for h in unwatched["hooks"]] == [None, None]  # nobody watched: not kept

    stream = urllib.request.urlopen(f"{admin}/trace/events", timeout=30)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(stream, lines), daemon=True).start()
    try:
        assert stream.headers["Content-Type"] == "text/event-stream"
        # Bytes at once, so that a browser takes the stream for open before any event.
        _wait_line(lines, "retry: ", 2)
        # The kept requests come first: wait until the replay has reached the last one.
        _wait_line(lines, f'"seq": {unwatched["seq"]},', 10)
        refused_create()
        seen = _wait_line(lines, '"POST /*/containers/create"', 20)
    finally:
        stream.close()
    event = json.loads(seen[-1].removeprefix("data: "))
    assert event["status"] == 403 and event["client"]["transport"] == "tcp"
    fine, refuser = event["hooks"]
    assert (fine["adapter"], fine["outcome"], refuser["outcome"]) == ("fine", "ok", "refused")
    sent = fine["sent"]["ClientRequest"]
    assert sent["Method"] == "POST" and sent["Request"].endswith(f"create?name={name}")
    assert '"PASSWORD=<redacted>"' in sent["Body"] and SECRET not in json.dumps(event)
    assert fine["answer"]["ModifiedClientRequest"]["Method"] == "POST"
    assert "no containers today" in refuser["message"]


def test_powerstrip_trace_prints_requests_as_they_end(engine, observed) -> None:
    proxy: ProxyService = observed["proxy"]
    command = [sys.executable, "-m", "powerstrip", "trace", "--admin", observed["admin"],
               "--endpoint", "version"]
    once = subprocess.run([*command, "--once"], capture_output=True, timeout=30)
    assert once.returncode == 0, once.stderr
    kept = once.stdout.decode().count("endpoint GET /*/version")
    live = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(live.stdout, lines), daemon=True).start()
    try:
        for _ in range(kept):  # the replay of what the proxy keeps
            _wait_line(lines, "fine", 20)
        ok(docker(proxy.docker_host, "version"))
        block = _wait_line(lines, "fine", 20)
    finally:
        live.send_signal(signal.SIGINT)
        assert live.wait(10) == 0, live.stderr.read()
    head = next(line for line in block if "/version" in line)
    assert re.search(r"GET /v1\.\d+/version  200  [\d.]+ ms  tcp client 127\.0\.0\.1:\d+", head), \
        head
    assert any("endpoint GET /*/version" in line for line in block), block
    assert re.search(r"pre\s+fine\s+ok", block[-1]), block
    # No other endpoint got through the filter.
    assert not any("/_ping" in line for line in block), block
