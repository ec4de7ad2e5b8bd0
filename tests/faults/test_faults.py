"""Faults around the proxy process: a daemon that is down or misbehaves, clients that abort or
send garbage, shutdown and socket files. The daemon here is a small scripted server on a real
unix socket so each fault can be produced on purpose; the e2e suite covers the real daemon."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.rawhttp import Conn

pytestmark = pytest.mark.timeout(30)


class Proxy:
    def __init__(self, proc: subprocess.Popen, host: str) -> None:
        self.proc = proc
        self.host = host
        self.port = int(host.rsplit(":", 1)[1]) if host.startswith("tcp://") else 0

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def start_proxy(upstream: str, *extra: str, listen: str = "tcp://127.0.0.1:0") -> Proxy:
    proc = subprocess.Popen(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", listen,
         "--upstream", upstream, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "POWERSTRIP_CONFIG": ""}, cwd="/",
    )
    line = proc.stdout.readline()
    if not line.startswith("export DOCKER_HOST="):
        proc.kill()
        raise AssertionError(f"proxy did not start: {line!r} {proc.stderr.read()}")
    return Proxy(proc, line.strip().split("=", 1)[1])


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def make(upstream: str, *extra: str, **kw: str) -> Proxy:
        proxy = start_proxy(upstream, *extra, **kw)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
        proxy.proc.wait()


class FakeDaemon:
    """A unix-socket server whose every connection runs ``handler(conn)`` in a thread."""

    def __init__(self, path: Path, handler: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.handler = handler
        self.connections = 0
        self.received = bytearray()
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.handler, args=(conn,), daemon=True).start()


def answer_pings(conn: socket.socket) -> None:
    """A daemon that answers every request on a keep-alive connection with a short 200."""
    with conn:
        while conn.recv(65536):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """The next response's status line with its headers, and its body."""
    response = Conn(sock=sock).read()
    head = "\r\n".join([response.status_line, *(f"{k}: {v}" for k, v in response.headers)])
    return head.encode("latin-1"), response.body


def test_daemon_down_answers_502_at_once_naming_the_daemon(proxy_factory, tmp_path):
    missing = tmp_path / "nobody-home.sock"
    proxy = proxy_factory(f"unix://{missing}")
    sock = proxy.connect()
    started = time.monotonic()
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = read_response(sock)
    assert time.monotonic() - started < 2
    assert head.startswith(b"HTTP/1.1 502 ")
    assert str(missing) in json.loads(body)["message"]


def test_docker_cli_prints_the_daemon_down_message(proxy_factory, tmp_path):
    missing = tmp_path / "gone.sock"
    proxy = proxy_factory(f"unix://{missing}")
    result = subprocess.run(
        ["docker", "ps"], env={**os.environ, "DOCKER_HOST": proxy.host,
                               "DOCKER_CONFIG": str(tmp_path)},
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr


def test_malformed_request_gets_400_and_reaches_nobody(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", lambda conn: conn.close())
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /_ping HTTP/1.1\r\nBad Header: x\r\n\r\n")
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert "malformed" in json.loads(body)["message"]
    assert sock.recv(100) == b""  # and the connection is closed
    assert daemon.connections == 0


def streaming_daemon(closed: threading.Event) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                conn.sendall(b"6\r\nevent\n\r\n")
                time.sleep(0.01)
        except OSError:
            closed.set()

    return handle


def test_client_abort_mid_stream_closes_the_daemon_connection(proxy_factory, tmp_path):
    closed = threading.Event()
    daemon = FakeDaemon(tmp_path / "d.sock", streaming_daemon(closed))
    proxy = proxy_factory(daemon.host)
    baseline = proxy.fd_count()
    sock = proxy.connect()
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"event" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended before its first event"
        received += chunk
    sock.close()
    assert closed.wait(5), "the daemon connection stayed open after the client left"
    deadline = time.monotonic() + 5
    while proxy.fd_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.fd_count() == baseline


def test_daemon_disconnect_mid_stream_closes_the_client(proxy_factory, tmp_path):
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /containers/x/export HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    assert received.endswith(b"partial")


def test_daemon_closing_without_an_answer_is_a_502(proxy_factory, tmp_path):
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 502 ")
    assert "without answering" in json.loads(body)["message"]


def test_daemon_closing_after_100_continue_is_still_a_502(proxy_factory, tmp_path):
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.2)
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"POST /build HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n")
    head, _ = read_response(sock)
    assert head.startswith(b"HTTP/1.1 100 ")
    sock.sendall(b"abc")
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 502 ")
    assert "without answering" in json.loads(body)["message"]


def test_stray_bytes_after_an_answer_do_not_spoil_the_next_one(proxy_factory, tmp_path):
    # dockerd never does this; an upstream that does must not make the proxy misread the
    # answers that follow on the same connection.
    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKX")
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
            conn.recv(65536)

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b"OKX"):
        first += sock.recv(65536)
    sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"again"


def test_no_file_descriptors_leak_over_many_connections(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = proxy_factory(daemon.host)
    baseline = proxy.fd_count()
    for _ in range(100):
        with proxy.connect() as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"
    deadline = time.monotonic() + 5
    while proxy.fd_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.fd_count() == baseline


def test_sigterm_lets_an_open_request_finish_then_exits_0(proxy_factory, tmp_path):
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        time.sleep(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    idle = proxy.connect()
    busy = proxy.connect()
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    proxy.proc.send_signal(signal.SIGTERM)
    assert read_response(busy)[1] == b"slow"
    assert idle.recv(10) == b""
    assert proxy.proc.wait(10) == 0


def test_stale_unix_socket_is_replaced_and_a_live_one_refused(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    listen = tmp_path / "p.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(listen))
    stale.close()  # bound, never listening: what a dead process leaves behind
    proxy = proxy_factory(daemon.host, listen=f"unix://{listen}")
    assert proxy.host == f"unix://{listen}"
    assert oct(listen.stat().st_mode & 0o777) == "0o660"
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(listen))
    client.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(client)[1] == b"OK"

    second = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", f"unix://{listen}",
         "--upstream", daemon.host],
        capture_output=True, text=True, timeout=20, cwd="/",
    )
    assert second.returncode != 0
    assert "already listening" in second.stderr


def test_busy_poll_from_the_command_line_wins_over_a_bad_environment_value(tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    command = [sys.executable, "-m", "powerstrip", "serve", "--listen", "tcp://127.0.0.1:0",
               "--upstream", daemon.host]
    env = {**os.environ, "POWERSTRIP_CONFIG": "", "POWERSTRIP_BUSY_POLL": "fast"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd="/",
                             env=env)
    assert refused.returncode == 2
    assert "--busy-poll: 'fast' is not a number of microseconds" in refused.stderr
    proc = subprocess.Popen([*command, "--busy-poll", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/", env=env)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_connection_close_from_the_daemon_reaches_the_client(proxy_factory, tmp_path):
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert read_response(sock)[1] == b"OK"
    assert sock.recv(10) == b""


def test_environment_fallbacks_and_several_listeners(tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    listen = tmp_path / "p.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "powerstrip", "serve", "--socket-group", "daemon"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env={**os.environ, "POWERSTRIP_LISTEN": f"127.0.0.1:{port},unix://{listen}",
             "POWERSTRIP_UPSTREAM": daemon.host, "POWERSTRIP_CONFIG": ""},
    )
    try:
        assert proc.stdout.readline().strip() == f"export DOCKER_HOST=tcp://127.0.0.1:{port}"
        assert listen.stat().st_gid == grp.getgrnam("daemon").gr_gid
        for connect in (
            lambda: socket.create_connection(("127.0.0.1", port), timeout=10),
            lambda: _unix(listen),
        ):
            with connect() as sock:
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock)[1] == b"OK"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def _unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock
