"""``--audit-log``: SIGHUP reopens the file after logrotate moved it, and a file that cannot be
written (a full disk) never stops the proxy: it goes on serving and counts what it lost."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from powerstrip_dev.processes import start_proxy, stop_process
from tests.faults.test_faults import FakeDaemon, answer_pings, read_response

pytestmark = pytest.mark.timeout(60)

PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n"


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(PING)
        head, _ = read_response(sock)
    return head


def wait(predicate, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sighup_reopens_the_audit_log_after_logrotate(tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    audit = tmp_path / "audit.log"
    proxy = start_proxy(daemon.host, "--audit-log", str(audit), logdir=tmp_path / "p")
    try:
        assert ping(proxy.port).startswith(b"HTTP/1.1 200")
        assert wait(lambda: len(lines(audit)) == 1)
        os.rename(audit, tmp_path / "audit.log.1")
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait(audit.exists), "SIGHUP did not reopen the audit log"
        assert ping(proxy.port).startswith(b"HTTP/1.1 200")
        assert wait(lambda: len(lines(audit)) == 1)
        assert len(lines(tmp_path / "audit.log.1")) == 1
        assert lines(audit)[0]["status"] == 200
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()


def test_a_full_disk_does_not_stop_the_proxy(tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = start_proxy(daemon.host, "--audit-log", "/dev/full", "--admin", "tcp://127.0.0.1:0",
                        logdir=tmp_path / "p")
    try:
        for _ in range(3):
            assert ping(proxy.port).startswith(b"HTTP/1.1 200")
        assert wait(lambda: "admin listener: " in proxy.log())
        admin = re.search(r"admin listener: (http://\S+?)/? ", proxy.log()).group(1)
        with urllib.request.urlopen(f"{admin.rstrip('/')}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert re.search(r"^powerstrip_audit_errors_total 3\.0$", text, re.M), text
        log = proxy.log()
        assert log.count("audit log /dev/full: cannot write") == 1, log
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()


def test_an_audit_log_that_cannot_be_opened_is_a_usage_error(tmp_path):
    from tests.faults.test_listener_guard import serve

    refused = serve(tmp_path, "--listen", "tcp://127.0.0.1:0",
                    "--audit-log", str(tmp_path / "missing" / "audit.log"))
    assert refused.returncode == 2, refused.stderr
    assert "--audit-log: cannot open" in refused.stderr
