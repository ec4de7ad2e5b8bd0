"""The docker CLI against ``powerstrip serve --tlsverify``, as against ``dockerd --tlsverify``:
a client certificate the authority signed gets in; no certificate, one from another authority
and an expired one are refused in the TLS handshake, before a request is read, so the daemon
never hears of them. ``--tls`` alone encrypts and lets in a client with no certificate.

Whether the daemon heard of a refused client is watched on a stand-in daemon: a unix socket
that counts the connections the proxy opens to it (a client with a good certificate opens one,
which shows the count would see a request that got through)."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip_dev.processes import ProxyService, ServiceError, start_proxy
from tests.e2e.conftest import LineReader, docker, end, ok, popen_docker
from tests.tlscerts import make_certs, make_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    """The proxy's authority and certificate, and the DOCKER_CERT_PATH of each kind of client;
    every client trusts the proxy's authority (``ca.pem``), so only its own certificate can be
    what is refused."""
    authority = make_certs(_mkdir(tmp_path / "authority"))
    stranger = make_certs(_mkdir(tmp_path / "stranger"))
    dirs = {
        "authority": authority,
        "stranger": stranger,
        "good": make_client(tmp_path / "good", authority, "alice"),
        "expired": make_client(tmp_path / "expired", authority, "alice", expired=True),
        "foreign": make_client(tmp_path / "foreign", stranger, "mallory"),
        "none": _mkdir(tmp_path / "none"),
    }
    for name in ("foreign", "none"):
        shutil.copy(authority / "ca.pem", dirs[name] / "ca.pem")
    return dirs


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tls_flags(authority: Path, verify: bool = True) -> list[str]:
    flags = ["--tlsverify", "--tlscacert", str(authority / "ca.pem")] if verify else ["--tls"]
    return [*flags, "--tlscert", str(authority / "server-cert.pem"),
            "--tlskey", str(authority / "server-key.pem")]


def _start(upstream: str, *flags: str) -> ProxyService:
    logdir = Path(tempfile.mkdtemp(prefix="ps-tlsverify-"))
    try:
        return start_proxy(upstream, *flags, logdir=logdir)
    except ServiceError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def verifying(engine, pki) -> Iterator[ProxyService]:
    """A proxy in front of the real daemon with ``--tlsverify``."""
    proxy = _start(engine.host, *_tls_flags(pki["authority"]))
    yield proxy
    assert proxy.stop() == 0


class CountingDaemon:
    """A stand-in daemon on a unix socket: counts connections and closes each at once."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "daemon.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(16)
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def guarded(pki) -> Iterator[tuple[ProxyService, CountingDaemon]]:
    """A proxy with ``--tlsverify`` in front of a ``CountingDaemon``."""
    directory = Path(tempfile.mkdtemp(prefix="ps-count-"))
    daemon = CountingDaemon(directory)
    proxy = _start(f"unix://{daemon.path}", *_tls_flags(pki["authority"]))
    yield proxy, daemon
    proxy.stop()
    daemon.close()
    shutil.rmtree(directory, ignore_errors=True)


def as_client(proxy: ProxyService, cert_path: Path, *args: str, **kwargs):
    """The docker CLI as ``DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=cert_path``."""
    return docker(proxy.docker_host, *args,
                  env_extra={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)},
                  timeout=60, **kwargs)


def test_the_printed_line_asks_the_cli_to_verify(verifying):
    assert verifying.assignments.endswith(" DOCKER_TLS_VERIFY=1")


def test_a_client_certificate_from_the_authority_gets_in(verifying, engine, pki, scratch):
    assert ok(as_client(verifying, pki["good"], "version", "--format",
                        "{{.Server.Version}}")) == \
        ok(docker(engine.host, "version", "--format", "{{.Server.Version}}"))
    assert ok(as_client(verifying, pki["good"], "run", "--rm", "--name", scratch.name("tv"),
                        "busybox", "echo", "hi")) == b"hi\n"
    assert ok(as_client(verifying, pki["good"], "run", "-i", "--rm",
                        "--name", scratch.name("tv-i"), "busybox", "cat",
                        input=b"x\n")) == b"x\n"


@pytest.mark.parametrize("client", ["none", "foreign", "expired"])
def test_a_client_without_a_good_certificate_is_refused_before_the_daemon(guarded, pki,
                                                                           client):
    proxy, daemon = guarded
    result = as_client(proxy, pki[client], "version")
    assert result.returncode != 0
    assert b"tls" in result.stderr.lower(), result.stderr
    assert b"remote error" in result.stderr or b"certificate" in result.stderr, result.stderr
    assert daemon.connections == 0
    # The same proxy, the same stand-in: a good certificate does reach it.
    as_client(proxy, pki["good"], "version")
    assert daemon.connections > 0


@pytest.mark.parametrize("client", ["none", "foreign", "expired"])
def test_a_raw_tls_client_gets_a_handshake_failure(guarded, pki, client):
    proxy, daemon = guarded
    context = ssl.create_default_context(cafile=str(pki["authority"] / "ca.pem"))
    if client != "none":
        context.load_cert_chain(pki[client] / "cert.pem", pki[client] / "key.pem")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            # With TLS 1.3 the server's refusal of the client's certificate comes after the
            # client's side of the handshake is done: it is read with the first answer.
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
                answer = tls.recv(1024)
                assert not answer, answer  # no HTTP answer, at most an ending
                raise ConnectionResetError("ended without an answer")
    assert daemon.connections == 0


def test_tls_alone_lets_in_a_client_without_a_certificate(engine, pki, tmp_path):
    proxy = _start(engine.host, *_tls_flags(pki["authority"], verify=False))
    try:
        # The printed line: the client verifies the proxy, with no certificate of its own.
        assert proxy.assignments.endswith(" DOCKER_TLS_VERIFY=1"), proxy.assignments
        assert ok(as_client(proxy, pki["none"], "version", "--format", "{{.Server.Version}}"))
        # ``docker --tls``: encrypted, the proxy not verified (the CLI still reads a ca.pem).
        foreign_ca = _mkdir(tmp_path / "foreign-ca")
        shutil.copy(pki["stranger"] / "ca.pem", foreign_ca / "ca.pem")
        assert ok(docker(proxy.docker_host, "version", "--format", "{{.Server.Version}}",
                         env_extra={"DOCKER_TLS": "1", "DOCKER_CERT_PATH": str(foreign_ca)}))
        # Without TLS the CLI cannot speak to it.
        assert docker(proxy.docker_host, "version").returncode != 0
    finally:
        assert proxy.stop() == 0


def test_exec_with_stdin_and_logs_follow_through_a_verifying_listener(verifying, engine, pki,
                                                                     scratch):
    """The rest of what the CLI does over a hijacked or streamed connection: ``exec -i`` whose
    stdin ends (a close_notify, taken as a half-close) and ``logs -f`` that keeps streaming."""
    name = scratch.name("tv-exec")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sh", "-c",
              "echo first-line; sleep 3; echo later-line; sleep 120"))
    assert ok(as_client(verifying, pki["good"], "exec", "-i", name, "wc", "-l",
                        input=b"a\nb\nc\n")).strip() == b"3"
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(pki["good"])}
    follow = popen_docker(verifying.docker_host, "logs", "-f", name, env_extra=env)
    try:
        reader = LineReader(follow)
        assert reader.readline(timeout=10.0) == b"first-line\n"
        assert reader.readline(timeout=10.0) == b"later-line\n"
        assert follow.poll() is None, "still following"
    finally:
        end(follow)
