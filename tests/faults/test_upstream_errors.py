"""``powerstrip_upstream_errors_total{kind}``: a daemon that cannot be reached, and one that
goes while it owes an answer, are counted by kind."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from powerstrip_dev.processes import start_proxy, stop_process
from tests.faults.test_faults import FakeDaemon

pytestmark = pytest.mark.timeout(60)


def admin_of(proxy) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"admin listener: (http://\S+?)/? ", proxy.log())
        if found:
            return found.group(1).rstrip("/")
        time.sleep(0.05)
    raise AssertionError(proxy.log())


def errors(admin: str, kind: str) -> float:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf'^powerstrip_upstream_errors_total{{kind="{kind}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def request(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_an_unreachable_daemon_is_counted(tmp_path):
    proxy = start_proxy(f"unix://{tmp_path / 'nobody.sock'}", "--admin", "tcp://127.0.0.1:0",
                        logdir=tmp_path / "p")
    try:
        admin = admin_of(proxy)
        assert request(proxy.port).startswith(b"HTTP/1.1 502 ")
        assert errors(admin, "unreachable") == 1
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()


def test_a_daemon_that_goes_mid_answer_is_counted(tmp_path):
    def half_answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", half_answer)
    proxy = start_proxy(daemon.host, "--admin", "tcp://127.0.0.1:0", logdir=tmp_path / "p")
    try:
        admin = admin_of(proxy)
        assert request(proxy.port).endswith(b"only part")  # cut, as the daemon cut it
        assert errors(admin, "lost") == 1
        assert errors(admin, "unreachable") == 0
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
