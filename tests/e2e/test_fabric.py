"""``powerstrip_dev.fabric``: hosts that reach each other over the bridge, and only there."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from powerstrip_dev.fabric import Fabric


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def _get(host, url: str) -> subprocess.CompletedProcess[str]:
    code = (f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=3)"
            ".read().decode())")
    return subprocess.run(host.command([sys.executable, "-c", code]), capture_output=True,
                          text=True, timeout=20)


@pytest.mark.timeout(60)
def test_hosts_reach_each_other_over_the_bridge_and_nothing_else(tmp_path) -> None:
    before = _namespaces()
    (tmp_path / "hello").write_text("served on b")
    with Fabric() as fabric:
        a, b = fabric.add_host("a"), fabric.add_host("b")
        assert a.address != b.address
        assert {a.netns, b.netns} <= _namespaces()
        server = subprocess.Popen(
            b.command([sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8000"]),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                reached = _get(a, f"http://{b.address}:8000/hello")
                if reached.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert reached.stdout.strip() == "served on b", reached.stderr
            # Each host's loopback is its own: b's server is not on a's.
            assert _get(a, "http://127.0.0.1:8000/hello").returncode != 0
        finally:
            server.terminate()
            server.wait(10)
    assert _namespaces() <= before, "namespaces left behind"
