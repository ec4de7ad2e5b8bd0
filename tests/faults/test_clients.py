"""The ``clients`` allowlist of the adapters file, on real sockets: a unix listener knows its
client from the kernel, a ``--tlsverify`` listener from the client's certificate; a client the
list does not name gets a 403 saying who it was taken to be, and the daemon never hears of it."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.faults.test_faults import (  # noqa: F401 - proxy_factory is a fixture
    FakeDaemon,
    answer_pings,
    proxy_factory,
    read_response,
)
from tests.tlscerts import make_certs, make_client

pytestmark = pytest.mark.timeout(30)

PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"


def write_config(path: Path, *allow: str) -> Path:
    entries = "".join(f"    - {entry}\n" for entry in allow)
    path.write_text(f"endpoints: {{}}\nadapters: {{}}\nclients:\n  allow:\n{entries}")
    return path


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def other_uid() -> int:
    return os.getuid() + 4242


def test_a_unix_client_the_list_names_by_uid_is_let_in(proxy_factory, tmp_path):  # noqa: F811
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = write_config(tmp_path / "a.yml", f"{{uid: {other_uid()}}}", f"{{uid: {os.getuid()}}}")
    listen = tmp_path / "p.sock"
    proxy_factory(daemon.host, "--config", str(config), listen=f"unix://{listen}")
    with unix_client(listen) as sock:
        for _ in range(2):
            sock.sendall(PING)
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"OK"
    assert daemon.connections == 1


def test_a_unix_client_the_list_does_not_name_gets_403_saying_who_it_is(proxy_factory, tmp_path):  # noqa: F811
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = write_config(tmp_path / "a.yml", f"{{uid: {other_uid()}}}", "{common_name: alice}")
    listen = tmp_path / "p.sock"
    proxy_factory(daemon.host, "--config", str(config), listen=f"unix://{listen}")
    with unix_client(listen) as sock:
        sock.sendall(PING)
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 403 ")
        message = json.loads(body)["message"]
        assert f"uid {os.getuid()}" in message
        assert "allowlist" in message
        assert sock.recv(1) == b""  # and the connection ends
    assert daemon.connections == 0


def test_a_reload_that_drops_a_client_refuses_its_next_request(proxy_factory, tmp_path):  # noqa: F811
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = write_config(tmp_path / "a.yml", f"{{uid: {os.getuid()}}}")
    listen = tmp_path / "p.sock"
    proxy = proxy_factory(daemon.host, "--config", str(config), listen=f"unix://{listen}")
    with unix_client(listen) as sock:
        sock.sendall(PING)
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
        write_config(config, f"{{uid: {other_uid()}}}")
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:
            sock.sendall(PING)
            head, body = read_response(sock)
            if head.startswith(b"HTTP/1.1 403 ") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert f"uid {os.getuid()}" in json.loads(body)["message"]


@pytest.mark.parametrize(("name", "allowed"), [("alice", True), ("bob", False)])
def test_a_tls_client_is_let_in_by_its_certificates_common_name(
        proxy_factory, tmp_path, name, allowed):  # noqa: F811
    authority = make_certs(_mkdir(tmp_path / "ca"))
    client_dir = make_client(tmp_path / name, authority, name)
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = write_config(tmp_path / "a.yml", "{common_name: alice}")
    proxy = proxy_factory(
        daemon.host, "--config", str(config), "--tlsverify",
        "--tlscacert", str(authority / "ca.pem"),
        "--tlscert", str(authority / "server-cert.pem"),
        "--tlskey", str(authority / "server-key.pem"))
    context = ssl.create_default_context(cafile=str(authority / "ca.pem"))
    context.load_cert_chain(str(client_dir / "cert.pem"), str(client_dir / "key.pem"))
    with context.wrap_socket(proxy.connect(), server_hostname="127.0.0.1") as sock:
        sock.sendall(PING)
        head, body = read_response(sock)
    if allowed:
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"OK"
        assert daemon.connections == 1
    else:
        assert head.startswith(b"HTTP/1.1 403 ")
        assert f"tls client CN={name}" in json.loads(body)["message"]
        assert daemon.connections == 0


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
