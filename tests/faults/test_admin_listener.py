"""The admin listener takes the API listeners' address forms, TLS and client-certificate
options, and their guard: plain TCP beyond loopback is refused without the insecure flag, a
``--tlsverify`` admin listener refuses a client without a certificate from the CA, and
``powerstrip trace`` reaches it over TLS with a certificate and over a unix socket."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from powerstrip.observe.terminal import AdminTLS, connection_for
from powerstrip_dev.processes import start_proxy, stop_process
from tests.faults.test_listener_guard import INSECURE, serve, starts
from tests.tlscerts import make_certs, make_client

pytestmark = pytest.mark.timeout(60)


def _admin_url(proxy) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"admin listener: (\S+?)/? ", proxy.log())
        if found:
            return found.group(1).rstrip("/")
        time.sleep(0.05)
    raise AssertionError(proxy.log())


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _trace_once(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "powerstrip", "trace", "--once", "--admin", url,
                           *options], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "POWERSTRIP_ADMIN": ""})


def test_plain_tcp_beyond_loopback_is_refused_without_the_flag(tmp_path):
    refused = serve(tmp_path, "--listen", "tcp://127.0.0.1:0", "--admin", "tcp://0.0.0.0:0")
    assert refused.returncode == 2, refused.stderr
    assert "--admin" in refused.stderr and INSECURE in refused.stderr
    assert "DOCKER_HOST" not in refused.stdout
    _, stderr = starts(tmp_path, "--listen", "tcp://127.0.0.1:0", "--admin", "tcp://0.0.0.0:0",
                       INSECURE)
    assert re.search(r"admin listener: http://0\.0\.0\.0:\d+", stderr), stderr


def test_a_tlsverify_admin_listener_asks_for_a_certificate_from_the_ca(tmp_path):
    authority = make_certs(tmp_path)
    client = make_client(tmp_path / "client", authority, "prometheus")
    other = make_client(tmp_path / "other", make_certs(Path(_mkdir(tmp_path / "ca2"))), "eve")
    proxy = start_proxy(
        f"unix://{tmp_path / 'd.sock'}", "--admin", "tcp://127.0.0.1:0", "--tlsverify",
        "--tlscacert", str(authority / "ca.pem"), "--tlscert", str(authority / "server-cert.pem"),
        "--tlskey", str(authority / "server-key.pem"), logdir=tmp_path / "p")
    try:
        url = _admin_url(proxy)
        assert url.startswith("https://127.0.0.1:"), url
        # No certificate, and one from another CA: refused at the handshake.
        for tls in (AdminTLS(str(authority / "ca.pem")),
                    AdminTLS(str(authority / "ca.pem"), str(other / "cert.pem"),
                             str(other / "key.pem"))):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _get(connection_for(url, tls), "/healthz")
        # Plain HTTP gets no answer either.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _get(connection_for(url.replace("https://", "http://")), "/healthz")
        tls = AdminTLS(str(authority / "ca.pem"), str(client / "cert.pem"),
                       str(client / "key.pem"))
        status, body = _get(connection_for(url, tls), "/healthz")
        assert status == 200 and json.loads(body) == {"status": "serving"}
        status, _ = _get(connection_for(url, tls), "/metrics")
        assert status == 200
        done = _trace_once(url, "--tlscacert", str(authority / "ca.pem"),
                           "--tlscert", str(client / "cert.pem"),
                           "--tlskey", str(client / "key.pem"))
        assert done.returncode == 0, done.stderr
        refused = _trace_once(url, "--tlscacert", str(authority / "ca.pem"))
        assert refused.returncode == 1 and "cannot read the trace" in refused.stderr
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()


def test_a_unix_admin_listener(tmp_path):
    from powerstrip.testing import short_tmpdir

    directory = Path(short_tmpdir("ps-admin-"))
    socket_path = directory / "admin.sock"
    proxy = start_proxy(f"unix://{tmp_path / 'd.sock'}", "--admin", f"unix://{socket_path}",
                        logdir=tmp_path / "p")
    try:
        assert _admin_url(proxy) == f"unix://{socket_path}"
        status, body = _get(connection_for(f"unix://{socket_path}"), "/healthz")
        assert status == 200, body
        # The daemon is not there: not ready, naming it.
        status, body = _get(connection_for(f"unix://{socket_path}"), "/readyz")
        assert status == 503 and "d.sock" in json.loads(body)["down"]["daemon"]
        done = _trace_once(f"unix://{socket_path}")
        assert done.returncode == 0 and done.stdout == "", done.stderr
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
