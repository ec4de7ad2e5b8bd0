"""``powerstrip serve --workers N``: several processes serving the same listeners, started,
reloaded and stopped through the parent (powerstrip/proxy/workers.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from powerstrip_dev.processes import ProxyService, ServiceError, start_proxy
from tests.faults.test_faults import (
    FakeDaemon,
    _unix,
    _wait,
    answer_once,
    answer_pings,
    read_response,
)

pytestmark = pytest.mark.timeout(40)

PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
UNHOOKED = 'version: 1\nendpoints: {}\nadapters:\n  gone: "http://127.0.0.1:1/"\n'
HOOKED = ('version: 1\nendpoints:\n  "GET /_ping":\n    pre: [gone]\n'
          'adapters:\n  gone: "http://127.0.0.1:1/"\n')


def workers_of(proxy: ProxyService) -> list[int]:
    """The pids of the parent's worker processes."""
    pid = proxy.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sockets_of(pid: int) -> int:
    """How many sockets process ``pid`` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., ProxyService]]:
    """Starts ``powerstrip serve --workers 2`` (on port 0 and on ``tmp_path/p.sock``);
    whatever is left running at the end is killed."""
    started: list[ProxyService] = []

    def make(upstream: str, *extra: str, config: Path | None = None) -> ProxyService:
        try:
            proxy = start_proxy(upstream, "--workers", "2", "--listen",
                                f"unix://{tmp_path / 'p.sock'}", *extra, config=config,
                                logdir=tmp_path / f"proxy-{len(started)}")
        except ServiceError as exc:
            raise AssertionError(f"proxy did not start: {exc}") from None
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        pids = workers_of(proxy) if proxy.proc.poll() is None else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proxy.proc.poll() is None:
            proxy.proc.kill()
        proxy.proc.wait()


def held_streams(daemon_closed: threading.Event) -> Callable[[socket.socket], None]:
    """A daemon that answers each request with a stream's head and keeps the connection open
    until the client's end closes it, as ``GET /events``."""
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.settimeout(30)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()
        daemon_closed.set()

    return handle


def test_a_burst_is_answered_by_both_workers(workers, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", held_streams(threading.Event()))
    daemon.sock.listen(256)
    proxy = workers(daemon.host)
    pids = workers_of(proxy)
    assert len(pids) == 2
    before = {pid: sockets_of(pid) for pid in pids}
    port = int(proxy.docker_host.rsplit(":", 1)[1])
    clients = []
    try:
        for n in range(200):
            if n % 2:
                sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            else:
                sock = _unix(tmp_path / "p.sock")
                sock.settimeout(20)
            clients.append(sock)
        for sock in clients:
            sock.sendall(b"GET /v1.41/events HTTP/1.1\r\nHost: x\r\n\r\n")
        heads = [sock.recv(200) for sock in clients]
        assert all(head.startswith(b"HTTP/1.1 200 OK\r\n") for head in heads)
        # Each stream held open takes a client socket and a daemon socket in its worker.
        held = {pid: sockets_of(pid) - before[pid] for pid in pids}
        assert sum(held.values()) == 2 * len(clients), held
        assert all(count > 0 for count in held.values()), held
    finally:
        for sock in clients:
            sock.close()


def test_sigterm_lets_an_open_request_finish_then_all_exit_0_and_the_socket_goes(
    workers, tmp_path,
):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow", delay=1, close=False))
    proxy = workers(daemon.host)
    listen = tmp_path / "p.sock"
    assert oct(listen.stat().st_mode & 0o777) == "0o660"
    pids = workers_of(proxy)
    busy = _unix(listen)
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _wait(lambda: daemon.connections == 1, 5)
    proxy.proc.send_signal(signal.SIGTERM)
    assert read_response(busy)[1] == b"slow"
    assert proxy.proc.wait(10) == 0
    assert all(gone(pid) for pid in pids)
    assert not listen.exists()
    assert "worker" not in proxy.stderr_path.read_text().replace("2 workers", "")


def test_sighup_reloads_the_adapters_file_in_every_worker(workers, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = tmp_path / "adapters.yml"
    config.write_text(UNHOOKED)
    proxy = workers(daemon.host, config=config)
    pids = workers_of(proxy)
    config.write_text(HOOKED)
    proxy.proc.send_signal(signal.SIGHUP)

    def reloaded() -> set[int]:
        text = proxy.stderr_path.read_text()
        return {int(pid) for pid in re.findall(r"powerstrip[\w.]*\[(\d+)\]: configuration .* "
                                               r"reloaded \(SIGHUP\)", text)}

    assert _wait(lambda: reloaded() == set(pids), 5), proxy.stderr_path.read_text()
    # Whichever worker takes it, a ping is now hooked to an adapter that does not answer.
    for _ in range(20):
        with _unix(tmp_path / "p.sock") as sock:
            sock.sendall(PING)
            assert read_response(sock)[0].startswith(b"HTTP/1.1 502 ")
    assert proxy.proc.poll() is None
    assert all(not gone(pid) for pid in pids)


def test_a_killed_worker_stops_the_other_and_the_parent_exits_non_zero(workers, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = workers(daemon.host)
    killed, other = workers_of(proxy)
    os.kill(killed, signal.SIGKILL)
    assert proxy.proc.wait(15) != 0
    assert gone(other)
    assert not (tmp_path / "p.sock").exists()
    log = proxy.stderr_path.read_text()
    assert f"worker {killed} was killed by signal 9" in log
    assert "not restarted" in log


def test_a_worker_that_cannot_start_stops_the_parent(tmp_path):
    """A worker that exits before it listens makes the parent exit non-zero without printing
    DOCKER_HOST (here every worker's command is one that exits at once)."""
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    script = (
        "import sys\n"
        "import powerstrip.proxy.workers as w\n"
        "w.worker_command = lambda verbose, options: [sys.executable, '-c', 'exit(3)']\n"
        "from powerstrip.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "serve", "--workers", "2",
         "--listen", f"unix://{tmp_path / 'p.sock'}", "--upstream", daemon.host],
        capture_output=True, text=True, timeout=20, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": ""},
    )
    assert proc.returncode == 1, proc.stderr
    assert "DOCKER_HOST" not in proc.stdout
    assert "exited before it was listening" in proc.stderr
    assert not (tmp_path / "p.sock").exists()


@pytest.mark.parametrize("listen", ["ssl:0:privateKey=key.pem", "systemd:domain=UNIX:index=0",
                                    "tcp:0:interface=127.0.0.1"])
def test_workers_with_a_twisted_description_is_a_usage_error(tmp_path, listen):
    refused = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--workers", "2", "--listen", listen,
         "--upstream", f"unix://{tmp_path / 'd.sock'}"],
        capture_output=True, text=True, timeout=20, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": ""},
    )
    assert refused.returncode == 2
    assert "only tcp:// and unix:// listeners can be shared" in refused.stderr
    assert listen in refused.stderr


@pytest.mark.parametrize(("flag", "env"), [(["--workers", "0"], {}),
                                           ([], {"POWERSTRIP_WORKERS": "two"})])
def test_a_bad_worker_count_is_refused(tmp_path, flag, env):
    refused = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", *flag, "--listen", "tcp://127.0.0.1:0",
         "--upstream", f"unix://{tmp_path / 'd.sock'}"],
        capture_output=True, text=True, timeout=20, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": "", **env},
    )
    assert refused.returncode == 2
    assert "--workers" in refused.stderr


def test_the_environment_sets_the_worker_count(tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = start_proxy(daemon.host, logdir=tmp_path / "proxy", env={"POWERSTRIP_WORKERS": "3"})
    try:
        assert len(workers_of(proxy)) == 3
        port = int(proxy.docker_host.rsplit(":", 1)[1])
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(PING)
                assert read_response(sock)[1] == b"OK"
    finally:
        proxy.proc.send_signal(signal.SIGINT)
        assert proxy.proc.wait(10) == 0


def test_workers_stop_when_their_parent_is_killed(workers, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    proxy = workers(daemon.host)
    pids = workers_of(proxy)
    proxy.proc.kill()
    proxy.proc.wait(5)
    # Orphans now, reaped by whoever adopted them: gone or a zombie, never still serving.
    assert _wait(lambda: all(gone(pid) or _zombie(pid) for pid in pids), 10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_serve_tls_and_verify_client_certificates(workers, tmp_path):
    """``--workers 2 --tlsverify``: the workers do the handshakes with the same files; a
    client with a certificate the authority signed gets its answer from either worker, one
    without a certificate is refused in the handshake, and the daemon never hears of it."""
    import ssl

    from tests.tlscerts import make_certs, make_client

    (tmp_path / "ca").mkdir()
    authority = make_certs(tmp_path / "ca")
    alice = make_client(tmp_path / "alice", authority, "alice")
    seen: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        conn.settimeout(20)
        while data := conn.recv(65536):
            seen.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    daemon = FakeDaemon(tmp_path / "d.sock", answer)
    proxy = workers(daemon.host, "--tlsverify", "--tlscacert", str(authority / "ca.pem"),
                    "--tlscert", str(authority / "server-cert.pem"),
                    "--tlskey", str(authority / "server-key.pem"))
    assert proxy.value.endswith(" DOCKER_TLS_VERIFY=1"), proxy.value
    assert len(workers_of(proxy)) == 2
    port = int(proxy.docker_host.rsplit(":", 1)[1])

    def connect(cert: Path | None) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(authority / "ca.pem"))
        if cert is not None:
            context.load_cert_chain(str(cert / "cert.pem"), str(cert / "key.pem"))
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    for _ in range(20):  # whichever worker accepts does the handshake
        with connect(alice) as sock:
            sock.sendall(PING)
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 OK") and body == b"OK", head
    assert len(seen) == 20
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with connect(None) as sock:
            sock.sendall(PING)
            if not sock.recv(100):
                raise ConnectionResetError("closed by the proxy")
    assert len(seen) == 20  # the daemon heard nothing of it


def test_the_clients_allowlist_holds_in_every_worker(workers, tmp_path):
    """Each worker reads who its clients are from its own connections: over the shared unix
    listener, this process's uid is refused by an allowlist that names another uid."""
    daemon = FakeDaemon(tmp_path / "d.sock", answer_pings)
    config = tmp_path / "adapters.yml"
    config.write_text("version: 1\nendpoints: {}\nadapters: {}\n"
                      f"clients:\n  allow:\n    - {{uid: {os.getuid() + 1}}}\n")
    workers(daemon.host, config=config)
    for _ in range(10):
        sock = _unix(tmp_path / "p.sock")
        sock.settimeout(20)
        try:
            sock.sendall(PING)
            head, body = read_response(sock)
        finally:
            sock.close()
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert f"uid {os.getuid()}".encode() in body, body
    assert daemon.connections == 0
