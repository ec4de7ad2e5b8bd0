"""Faults around the proxy process: a daemon that is down or misbehaves, clients that abort or
send garbage, shutdown and socket files. The daemon here is a small scripted server on a real
unix socket so each fault can be produced on purpose; the e2e suite covers the real daemon."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from powerstrip_dev.processes import ServiceError, start_proxy
from tests.e2e.conftest import rss_peak_mib
from tests.rawhttp import Conn
from tests.tlscerts import make_certs, ssl_listen

pytestmark = pytest.mark.timeout(30)


class Proxy:
    def __init__(self, proc: subprocess.Popen, host: str) -> None:
        self.proc = proc
        self.host = host
        address = host.split(" ", 1)[0]  # a TLS listener's line goes on: DOCKER_TLS_VERIFY=1
        self.port = int(address.rsplit(":", 1)[1]) if address.startswith("tcp://") else 0

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def make(upstream: str, *extra: str, listen: str = "tcp://127.0.0.1:0") -> Proxy:
        try:
            service = start_proxy(upstream, *extra, listen=listen,
                                  logdir=tmp_path / f"proxy-{len(started)}")
        except ServiceError as exc:
            raise AssertionError(f"proxy did not start: {exc}") from None
        proxy = Proxy(service.proc, service.value)
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


def answer_once(answer: bytes, *, delay: float = 0.0, close: bool = True
                ) -> Callable[[socket.socket], None]:
    """A daemon handler that reads one request, waits ``delay`` seconds, sends ``answer`` as it
    is (nothing if empty), then hangs up if ``close``."""
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        if delay:
            time.sleep(delay)
        if answer:
            conn.sendall(answer)
        if close:
            conn.close()

    return handle


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


def test_a_refused_client_that_goes_on_sending_reads_its_answer_and_no_reset(
        proxy_factory, tmp_path):
    # An upload refused before its body was read: the client is still writing when the answer
    # comes, as the docker CLI writes a plugin's or a build's tar. Had the proxy closed with
    # the body unread, the kernel would reset the connection and the client's next write
    # would fail (the CLI then prints "broken pipe", not the answer).
    daemon = FakeDaemon(tmp_path / "d.sock", lambda conn: conn.close())
    proxy = proxy_factory(daemon.host)
    for _ in range(5):
        sock = proxy.connect()
        sock.sendall(b"POST /v1.41/build HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"x" * 200_000)
        time.sleep(0.2)  # the answer and the proxy's close are made by now
        sock.sendall(b"y" * 400_000)  # raised BrokenPipeError or ConnectionResetError
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
        assert sock.recv(100) == b"", "the proxy half-closed after its answer"
        sock.close()
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
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"))
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"GET /containers/x/export HTTP/1.1\r\nHost: x\r\n\r\n")
    assert Conn(sock=sock).read_to_close().endswith(b"partial")


def test_daemon_closing_without_an_answer_is_a_502(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(b""))
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
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow", delay=1, close=False))
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
    proxy = start_proxy(daemon.host, "--busy-poll", "0", logdir=tmp_path / "proxy",
                        env={"POWERSTRIP_BUSY_POLL": "fast"})
    proc, port = proxy.proc, proxy.port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_connection_close_from_the_daemon_reaches_the_client(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"))
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


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sigint_lets_an_open_request_finish_then_exits_0(tmp_path, inherited):
    """``kill -INT`` stops the proxy as SIGTERM does, even when it was started with SIGINT
    ignored, as a shell's ``powerstrip serve &`` starts it."""
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow", delay=1, close=False))
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" \
        else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", "tcp://127.0.0.1:0",
         "--upstream", daemon.host],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": ""}, preexec_fn=ignore,
    )
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert read_response(busy)[1] == b"slow"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_after_sigterm_new_connections_are_refused_and_the_grace_is_5_seconds(
    proxy_factory, tmp_path,
):
    """A request the daemon never answers cannot hold the proxy up: 5 s after SIGTERM it gets a
    Docker-style 503 and the proxy exits 0; meanwhile nobody new gets in."""
    daemon_saw_close = threading.Event()

    def never_answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.settimeout(20)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        daemon_saw_close.set()

    daemon = FakeDaemon(tmp_path / "d.sock", never_answer)
    proxy = proxy_factory(daemon.host)
    stuck = proxy.connect()
    stuck.sendall(b"POST /v1.41/containers/x/wait HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 0\r\n\r\n")
    assert _wait(lambda: daemon.connections == 1, 5)
    stopped_at = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    assert _wait(refused, 1), "the proxy still accepted connections after SIGTERM"
    stuck.settimeout(15)
    head, body = read_response(stuck)
    waited = time.monotonic() - stopped_at
    assert head.startswith(b"HTTP/1.1 503 ")
    message = json.loads(body)["message"]
    assert "POST /v1.41/containers/x/wait" in message and "5 s" in message
    assert daemon.host in message
    assert 4.5 <= waited < 7, waited
    assert proxy.proc.wait(5) == 0
    assert daemon_saw_close.wait(5), "the daemon connection outlived the proxy"


def test_several_listen_flags_listen_on_each(proxy_factory, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    listen = tmp_path / "p.sock"
    proxy = proxy_factory(daemon.host, "--listen", f"unix://{listen}")
    assert proxy.host.startswith("tcp://127.0.0.1:")  # the first one is the one printed
    for sock in (proxy.connect(), _unix(listen)):
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"


def test_request_bytes_reach_the_daemon_unchanged(proxy_factory, tmp_path):
    """With no hook on it, what the client wrote is what the daemon reads: the request line,
    header case, order and repeats, the client's Host, and a chunked body with its chunk
    extension and trailer."""
    requests = [
        b"POST /v1.41/containers/create?name=a%2Fb HTTP/1.1\r\n"
        b"Host: api.moby.localhost\r\nUser-Agent: Docker-Client/28.0.0 (linux)\r\n"
        b"x-odd-CASE: 1\r\nX-Repeated: a\r\nX-Repeated: b\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"PUT /containers/x/archive?path=%2Ftmp HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Type: application/x-tar\r\nContent-Length: 12\r\n\r\n"
        b"\x00\x01\r\n\r\n\xff\xfeabcd",
    ]
    received = bytearray()
    got_all = threading.Event()

    def record(conn: socket.socket) -> None:
        with conn:
            for request in requests:
                start = len(received)
                while len(received) - start < len(request):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    received.extend(chunk)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
            got_all.set()
            conn.recv(65536)

    daemon = FakeDaemon(tmp_path / "d.sock", record)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    for request in requests:
        sock.sendall(request)
        assert read_response(sock)[1] == b"OK"
    assert got_all.wait(5)
    assert bytes(received) == b"".join(requests)
    assert daemon.connections == 1


def test_daemon_down_is_not_retried(proxy_factory, tmp_path):
    """Each request to a daemon that is down costs one connection attempt and gets its 502 at
    once; nothing is queued to retry later, and the daemon coming back is noticed at once."""
    path = tmp_path / "later.sock"
    proxy = proxy_factory(f"unix://{path}")
    started = time.monotonic()
    for _ in range(20):
        with proxy.connect() as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0].startswith(b"HTTP/1.1 502 ")
    assert time.monotonic() - started < 3
    daemon = FakeDaemon(path, answer_pings)
    time.sleep(1)
    assert daemon.connections == 0, "the proxy kept trying the daemon after answering 502"
    with proxy.connect() as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[1] == b"OK"
    assert daemon.connections == 1


def test_a_daemon_that_hangs_up_is_asked_once(proxy_factory, tmp_path):
    def hang_up(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", hang_up)
    proxy = proxy_factory(daemon.host)
    with proxy.connect() as sock:
        sock.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0].startswith(b"HTTP/1.1 502 ")
    time.sleep(1)
    assert daemon.connections == 1


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


HOOKED_VERSION = """\
endpoints:
  "GET /*/version":
    pre: [{name}]
adapters:
  {name}: http://127.0.0.1:1/
"""


@pytest.fixture
def etc_powerstrip() -> Iterator[Path]:
    """/etc/powerstrip as a mount point for a private copy; the real one is never written."""
    etc = Path("/etc/powerstrip")
    made = not etc.exists()
    etc.mkdir(exist_ok=True)
    try:
        yield etc
    finally:
        if made:
            etc.rmdir()


def serve_with_defaults(tmp_path: Path, cwd: Path, etc: Path, env: dict[str, str]) -> Proxy:
    """``powerstrip serve`` with no flags, in a mount namespace of its own where /run (so
    /var/run) is ``tmp_path/run`` and /etc/powerstrip is ``etc``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POWERSTRIP_")}
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount --bind "$1" /run && mount --bind "$2" /etc/powerstrip && shift 2 && exec "$@"',
         "sh", str(tmp_path / "run"), str(etc), sys.executable, "-m", "powerstrip", "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        env={**environ, **env},
    )
    line = proc.stdout.readline()
    if not line.startswith("export DOCKER_HOST="):
        proc.kill()
        raise AssertionError(f"proxy did not start: {line!r} {proc.stderr.read()}")
    return Proxy(proc, line.strip().split("=", 1)[1])


def test_defaults_listen_upstream_and_where_the_adapters_file_is_found(tmp_path, etc_powerstrip):
    """With no flags and no environment: listen on tcp://127.0.0.1:2375, forward to
    /var/run/docker.sock, and take ./powerstrip.yml, else /etc/powerstrip/adapters.yml (the
    original's path), else run with no hooks; POWERSTRIP_CONFIG names a file that beats both.

    Which file is in force shows in which adapter a hooked /version request names."""
    (tmp_path / "run").mkdir()
    daemon = FakeDaemon(tmp_path / "run" / "docker.sock", answer_pings)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "adapters.yml").write_text(HOOKED_VERSION.format(name="from_etc"))
    here = tmp_path / "here"
    here.mkdir()
    (here / "powerstrip.yml").write_text(HOOKED_VERSION.format(name="from_cwd"))
    named = tmp_path / "named.yml"
    named.write_text(HOOKED_VERSION.format(name="from_env"))
    empty = tmp_path / "empty"
    empty.mkdir()
    no_etc = tmp_path / "no-etc"
    no_etc.mkdir()

    cases = [
        (here, etc, {}, "from_cwd"),
        (empty, etc, {}, "from_etc"),
        (here, etc, {"POWERSTRIP_CONFIG": str(named)}, "from_env"),
        (empty, no_etc, {}, None),
    ]
    for cwd, etc_dir, env, adapter in cases:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert probe.connect_ex(("127.0.0.1", 2375)) != 0, \
                "something else already listens on 127.0.0.1:2375"
        proxy = serve_with_defaults(tmp_path, cwd, etc_dir, env)
        try:
            assert proxy.host == "tcp://127.0.0.1:2375"
            sock = proxy.connect()
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"  # from the daemon at /var/run/docker.sock
            sock.sendall(b"GET /v1.41/version HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(sock)
            if adapter is None:
                assert head.startswith(b"HTTP/1.1 200 ") and body == b"OK"
            else:
                assert head.startswith(b"HTTP/1.1 502 ")
                assert f"adapter {adapter} " in json.loads(body)["message"]
            sock.close()
        finally:
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.proc.wait(10) == 0
    assert daemon.connections == len(cases)  # one client connection, one daemon connection


def test_multiplexed_stream_upgrade_passes_raw_with_its_half_close(proxy_factory, tmp_path):
    """Daemons from API 1.42 answer a non-tty attach with 101 and
    ``application/vnd.docker.multiplexed-stream`` (the e2e daemon, at 1.41, says raw-stream):
    the head reaches the client as sent, framed bytes pass both ways untouched, and the
    client's half-close reaches the daemon as a half-close, after which the daemon still
    writes."""
    upgraded = (b"HTTP/1.1 101 UPGRADED\r\n"
                b"Content-Type: application/vnd.docker.multiplexed-stream\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")

    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    def attach(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(upgraded)
            stdin = b""
            while chunk := conn.recv(65536):  # until the client's half-close
                stdin += chunk
            conn.sendall(frame(1, stdin.upper()) + frame(2, b"stdin closed\n"))

    daemon = FakeDaemon(tmp_path / "d.sock", attach)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    sock.sendall(b"POST /v1.44/containers/x/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                 b"Host: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                 b"Content-Length: 0\r\n\r\n")
    received = b""
    while len(received) < len(upgraded):
        received += sock.recv(65536)
    assert received == upgraded
    sock.sendall(b"hello\x00\xff\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    rest = b""
    while chunk := sock.recv(65536):
        rest += chunk
    assert rest == frame(1, b"HELLO\x00\xff\r\n\r\n") + frame(2, b"stdin closed\n")


def test_tls_listener_encrypts_every_answer_and_prints_what_the_cli_needs(proxy_factory, tmp_path):
    """An ``ssl:`` listener: the printed line carries the bound port and DOCKER_TLS_VERIFY=1,
    and answers on a keep-alive connection go through TLS — none written to the socket
    beneath it in the clear."""
    certs = make_certs(tmp_path)
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = proxy_factory(daemon.host, listen=ssl_listen(certs))
    address, _, flags = proxy.host.partition(" ")
    assert flags == "DOCKER_TLS_VERIFY=1"
    port = int(address.rsplit(":", 1)[1])
    assert address == f"tcp://127.0.0.1:{port}" and port != 0
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="127.0.0.1") as sock:
        for _ in range(3):
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[1] == b"OK"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_daemon_that_stops_reading_holds_the_client_back(proxy_factory, tmp_path, framing):
    """Request-body backpressure, forced: the daemon reads 4 MiB of a 200 MiB body and then
    nothing for a while. The client's sending must stall within a bounded window instead of the
    proxy taking the body into memory; once the daemon reads again, every byte arrives."""
    mib = 1 << 20
    block = os.urandom(mib)
    chunk = b"%x\r\n%s\r\n" % (mib, block)
    body_size = 200 * mib
    wire_body = body_size if framing == "content-length" else 200 * len(chunk) + 5
    stalled, release, answered = threading.Event(), threading.Event(), threading.Event()
    received = [0]

    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            got = len(head) - head.index(b"\r\n\r\n") - 4
            while got < 4 * mib:
                got += len(conn.recv(65536))
            stalled.set()
            release.wait(20)
            while got < wire_body:
                data = conn.recv(1 << 18)
                if not data:
                    break
                got += len(data)
            received[0] = got
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
            answered.set()

    daemon = FakeDaemon(tmp_path / "d.sock", handle)
    proxy = proxy_factory(daemon.host)
    sock = proxy.connect()
    length = (f"Content-Length: {body_size}" if framing == "content-length"
              else "Transfer-Encoding: chunked")
    sock.sendall(f"POST /v1.41/images/load HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Type: application/x-tar\r\n{length}\r\n\r\n".encode())
    sent = [0]

    def send_body() -> None:
        piece = block if framing == "content-length" else chunk
        for _ in range(200):
            sock.sendall(piece)
            sent[0] += len(piece)
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
            sent[0] += 5

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    assert stalled.wait(10), "the daemon never got its first 4 MiB"
    time.sleep(2)
    before = sent[0]
    time.sleep(1)
    assert sent[0] == before, "the client kept sending while the daemon read nothing"
    assert before < 64 * mib, f"{before / mib:.0f} MiB taken in while the daemon read nothing"
    release.set()
    sender.join(30)
    assert not sender.is_alive() and sent[0] == wire_body
    assert answered.wait(30)
    assert read_response(sock)[1] == b"OK"
    assert received[0] == wire_body
    peak = rss_peak_mib(proxy.proc.pid)
    assert peak < 100, f"the proxy's peak RSS was {peak:.1f} MiB"


def _listen_backlog(port: int) -> int:
    """The backlog of the TCP socket listening on ``port``, as the kernel reports it (the
    Send-Q column of a listening socket)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return int(out.split()[2])


def test_a_burst_of_connections_waits_in_the_listen_queue_not_for_syn_retries(
        proxy_factory, tmp_path):
    """300 clients at once (CI systems open dozens) are all answered; the listen queue holds
    them while the proxy accepts, where Twisted's default of 50 sent the rest into SYN
    retransmits, seconds later."""
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    daemon.sock.listen(512)
    proxy = proxy_factory(daemon.host)
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(proxy.port) == min(4096, somaxconn)
    clients = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", proxy.port))
            clients.append(sock)
        for sock in clients:
            sock.setblocking(True)
            sock.settimeout(20)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        heads = [read_response(sock)[0].split(b"\r\n", 1)[0] for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert heads == [b"HTTP/1.1 200 OK"] * 300


def test_slow_heads_idle_connections_and_too_many_clients_are_let_go(proxy_factory, tmp_path):
    """A client sending a head byte by byte, one opening a connection and sending nothing, and
    one past the connection limit: none holds the proxy's resources for ever."""
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = proxy_factory(daemon.host, "--head-timeout", "1", "--idle-timeout", "2",
                          "--max-connections", "2")
    slow, idle = proxy.connect(), proxy.connect()
    try:
        slow.sendall(b"GET /_ping HTTP/1.1\r\nHo")
        head, body = read_response(slow)
        assert head.startswith(b"HTTP/1.1 408 ") and b"--head-timeout" in body
        assert slow.recv(1) == b"", "closed after the 408"
        idle.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle)[0].startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert idle.recv(1) == b"", "an idle keep-alive connection is closed"
        assert time.monotonic() - started >= 1.5, "not before its idle timeout"
        kept = [proxy.connect(), proxy.connect()]
        for sock in kept:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
        third = proxy.connect()
        third.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_response(third)
        assert head.startswith(b"HTTP/1.1 503 ") and b"--max-connections" in body
        third.close()
        for sock in kept:
            sock.close()
    finally:
        slow.close()
        idle.close()


@pytest.mark.parametrize(("flag", "value"), [("--head-timeout", "-1"), ("--idle-timeout", "x"),
                                             ("--max-connections", "1.5")])
def test_a_bad_limit_is_refused_at_start(tmp_path, flag, value):
    result = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", "tcp://127.0.0.1:0",
         "--upstream", f"unix://{tmp_path}/d.sock", flag, value],
        capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert result.returncode != 0 and flag in result.stderr
