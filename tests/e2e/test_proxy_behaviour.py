"""HTTP-level behaviour of the proxy against the real daemon, on raw sockets: keep-alive,
pipelining, chunked and large request bodies, /wait, legacy hijacks, headers, memory."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time

import h2.config
import h2.connection
import h2.events
import pytest

from tests.e2e.conftest import (
    LineReader,
    docker,
    end,
    ok,
    popen_docker,
    rss_peak_mib,
    wait_for,
)
from tests.rawhttp import Conn, connect

pytestmark = pytest.mark.timeout(120)


def test_keep_alive_and_pipelined_requests_are_answered_in_order(proxy):
    sock = connect(proxy.host)
    reader = Conn(sock=sock)
    for _ in range(3):  # keep-alive: one connection, several exchanges
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n")
        assert reader.read().body == b"OK"
    # Pipelined: three requests in one write, the middle one with a body.
    body = b'{"Image": "no-such-image-anywhere", "Cmd": ["true"]}'
    sock.sendall(
        b"GET /v1.41/version HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n" % (len(body), body)
    )
    response = reader.read()
    status, version = response.status, response.body
    assert status == 200 and "ApiVersion" in json.loads(version)
    response = reader.read()
    status, error = response.status, response.body
    assert status == 404 and "no-such-image-anywhere" in json.loads(error)["message"]
    response = reader.read()
    status, ping = response.status, response.body
    assert status == 200 and ping == b"OK"


def test_ping_headers_reach_the_client_unchanged(engine, proxy):
    def head_ping(host: str) -> dict[str, str]:
        sock = connect(host)
        sock.sendall(b"HEAD /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n")
        head = Conn(sock=sock).read(head_only=True)
        assert head.status == 200
        sock.close()
        return {name.lower(): value for name, value in head.headers}

    direct, proxied = head_ping(engine.host), head_ping(proxy.host)
    for name in ("api-version", "ostype", "docker-experimental", "server", "builder-version"):
        assert proxied.get(name) == direct.get(name), name
    assert direct["api-version"] == "1.41"


def busybox_tar(engine) -> bytes:
    result = docker(engine.host, "save", "busybox:latest", timeout=60)
    return ok(result)


def test_chunked_request_body_is_forwarded(engine, proxy):
    """docker-java and testcontainers send bodies chunked; images/load must accept them."""
    image = busybox_tar(engine)
    sock = connect(proxy.host)
    sock.sendall(
        b"POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for start in range(0, len(image), 40_000):
        piece = image[start:start + 40_000]
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    sock.sendall(b"0\r\n\r\n")
    response = Conn(sock=sock).read()
    status, body = response.status, response.body
    assert status == 200, body
    assert b"Loaded image" in body


def test_wait_headers_arrive_before_the_container_exits(engine, proxy, scratch):
    name = scratch.name("wait")
    ok(docker(engine.host, "create", "--name", name, "busybox", "sh", "-c", "sleep 3; exit 7"))
    sock = connect(proxy.host)
    sock.sendall(
        f"POST /v1.41/containers/{name}/wait?condition=next-exit HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    reader = Conn(sock=sock)
    started = time.monotonic()
    head = reader.read(head_only=True)
    assert head.status == 200
    assert time.monotonic() - started < 2, "wait's headers were held back"
    ok(docker(engine.host, "start", name))
    assert json.loads(reader.read_body(head))["StatusCode"] == 7
    assert time.monotonic() - started >= 2.5


@pytest.mark.parametrize("start_path", ["/v1.41/exec/{}/start", "/v1.41/exec/{}/%73tart"])
def test_legacy_hijack_without_upgrade_header(engine, proxy, scratch, start_path):
    """Old clients call exec start without Upgrade and get 200 then a raw stream; the daemon
    routes a percent-escaped spelling to the same endpoint, and hijacks it all the same."""
    name = scratch.name("legacy")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "60"))
    sock = connect(proxy.host)
    body = json.dumps({"AttachStdin": True, "AttachStdout": True, "Tty": False,
                       "Cmd": ["sh", "-c", "read line; echo got:$line"]}).encode()
    sock.sendall(
        f"POST /v1.41/containers/{name}/exec HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    reader = Conn(sock=sock)
    response = reader.read()
    status, answer = response.status, response.body
    assert status == 201
    exec_id = json.loads(answer)["Id"]
    start = b'{"Detach": false, "Tty": false}'
    sock.sendall(
        f"POST {start_path.format(exec_id)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(start)}\r\n\r\n".encode() + start
    )
    head = reader.read(head_only=True)
    assert head.status == 200
    assert head.header("content-type") == "application/vnd.docker.raw-stream"
    sock.sendall(b"hello\n")
    sock.shutdown(socket.SHUT_WR)  # stdin ends with a half-close
    out = reader.read_to_close()
    # Stream frames: 8-byte header then the payload.
    assert out[8:] == b"got:hello\n" and out[0] == 1


def test_legacy_attach_without_upgrade_header(engine, proxy, scratch):
    """Old clients attach without Upgrade too: 200, a raw stream, stdin in and the output out,
    and the client's half-close ends the container's stdin."""
    name = scratch.name("legacy-attach")
    ok(docker(engine.host, "create", "-i", "--name", name, "busybox", "sh", "-c",
              "while read line; do echo got:$line; done; echo stdin-ended"))
    sock = connect(proxy.host)
    sock.sendall(f"POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
                 "HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    reader = Conn(sock=sock)
    head = reader.read(head_only=True)
    assert head.status == 200
    assert head.header("content-type") == "application/vnd.docker.raw-stream"
    ok(docker(engine.host, "start", name))
    sock.sendall(b"one\ntwo\n")
    sock.shutdown(socket.SHUT_WR)
    out = reader.read_to_close()
    frames, rest = [], out
    while rest:
        size = int.from_bytes(rest[4:8], "big")
        frames.append((rest[0], rest[8:8 + size]))
        rest = rest[8 + size:]
    assert {stream for stream, _ in frames} == {1}
    assert b"".join(data for _, data in frames) == b"got:one\ngot:two\nstdin-ended\n"


def test_large_bodies_stream_both_ways_in_bounded_memory(engine, fresh_proxy, scratch):
    """300 MiB into a container and back out through the proxy; its memory stays small."""
    proc, host = fresh_proxy
    name = scratch.name("big")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "300"))
    size = 300 * 2**20
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as archive:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(os.urandom(1 << 20) * 300))
    data = payload.getvalue()
    sock = connect(host)
    sock.sendall(
        f"PUT /v1.41/containers/{name}/archive?path=/tmp HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    )
    sock.sendall(data)
    reader = Conn(sock=sock)
    response = reader.read()
    status, body = response.status, response.body
    assert status == 200, body
    sock.sendall(f"GET /v1.41/containers/{name}/archive?path=/tmp/big.bin HTTP/1.1\r\n"
                 "Host: x\r\nConnection: close\r\n\r\n".encode())
    assert reader.read(head_only=True).status == 200
    # Read slowly at first, so the proxy has to hold the daemon back rather than buffer.
    time.sleep(2)
    received = len(reader.buffer)
    chunk = bytearray(1 << 20)
    while n := sock.recv_into(chunk):
        received += n
    assert received > size
    assert rss_peak_mib(proc.pid) < 100


def test_http_1_0_client(engine, proxy):
    """An HTTP/1.0 client: the daemon answers HTTP/1.0 and ends a long body by closing; through
    the proxy the client gets the same, and its connection ends with the answer."""
    answers = {}
    for name, host in (("direct", engine.host), ("proxy", proxy.host)):
        sock = connect(host)
        sock.sendall(b"GET /v1.41/info HTTP/1.0\r\nHost: x\r\n\r\n")
        data = Conn(sock=sock).read_to_close()
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        answers[name] = (head.split(b"\r\n")[0], b"content-length" in head.lower(),
                         set(json.loads(body)))
    assert answers["proxy"] == answers["direct"]
    assert answers["proxy"][0] == b"HTTP/1.0 200 OK"


def _exec_id(host: str, container: str, tty: bool) -> str:
    body = json.dumps({"AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
                       "Tty": tty, "Cmd": ["sh", "-c", "read line; echo got:$line"]}).encode()
    conn = Conn(host)
    conn.send("POST", f"/v1.41/containers/{container}/exec", body,
              {"Content-Type": "application/json"})
    response = conn.read()
    conn.close()
    assert response.status == 201, response
    return response.json()["Id"]


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """A multiplexed stream's frames: (stream number, payload)."""
    frames = []
    while data:
        size = int.from_bytes(data[4:8], "big")
        frames.append((data[0], data[8:8 + size]))
        data = data[8 + size:]
    return frames


@pytest.mark.parametrize("tty", [False, True], ids=["multiplexed", "tty"])
def test_upgrade_tcp_exec_start_gets_101_upgraded(engine, proxy, scratch, tty):
    """The modern CLI's exec start: ``Connection: Upgrade``, ``Upgrade: tcp`` and a JSON body,
    answered ``101 UPGRADED``; then raw bytes both ways."""
    name = scratch.name("upgrade")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "60"))
    heads = {}
    for label, host in (("direct", engine.host), ("proxy", proxy.host)):
        exec_id = _exec_id(engine.host, name, tty)
        start = json.dumps({"Detach": False, "Tty": tty}).encode()
        sock = connect(host)
        sock.sendall(
            f"POST /v1.41/exec/{exec_id}/start HTTP/1.1\r\nHost: api.moby.localhost\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(start)}\r\n\r\n".encode() + start
        )
        reader = Conn(sock=sock)
        head = reader.read(head_only=True)
        heads[label] = (head.status_line, sorted(head.headers))
        assert head.status_line == "HTTP/1.1 101 UPGRADED"
        sock.sendall(b"hello\n")
        if not tty:
            # Without a terminal the half-close is stdin's end; a terminal has no half-close
            # (the daemon hangs it up), so there the command's own exit ends the stream.
            sock.shutdown(socket.SHUT_WR)
        out = reader.read_to_close()
        sock.close()
        if tty:
            assert out.replace(b"\r\n", b"\n") == b"hello\ngot:hello\n"  # the terminal echoes
        else:
            assert _frames(out) == [(1, b"got:hello\n")]
    assert heads["proxy"] == heads["direct"]


@pytest.mark.timeout(60)
def test_upgrade_tcp_attach_gets_101_upgraded(engine, proxy, scratch):
    """``docker attach``/``start -a`` hijack: 101, then stdin in and the container's output out
    as the daemon frames it, until the container ends."""
    heads = {}
    for label, host in (("direct", engine.host), ("proxy", proxy.host)):
        name = scratch.name("attach")
        ok(docker(engine.host, "create", "-i", "--name", name, "busybox",
                  "sh", "-c", "read line; echo got:$line; echo err:$line >&2"))
        sock = connect(host)
        sock.sendall(
            f"POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
            "HTTP/1.1\r\nHost: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        reader = Conn(sock=sock)
        head = reader.read(head_only=True)
        heads[label] = (head.status_line, sorted(head.headers))
        assert head.status_line == "HTTP/1.1 101 UPGRADED"
        ok(docker(engine.host, "start", name))
        sock.sendall(b"hello\n")
        out = reader.read_to_close()
        sock.close()
        assert sorted(_frames(out)) == [(1, b"got:hello\n"), (2, b"err:hello\n")]
    assert heads["proxy"] == heads["direct"]


@pytest.mark.parametrize("path", ["/version", "/info", "/containers/json?all=1", "/images/json",
                                  "/volumes", "/networks", "/containers/nobody-by-this-name/json"])
def test_unversioned_paths_pass(engine, proxy, path):
    """Paths without /vX.Y reach the daemon as they are, answered as they would be direct."""
    answers = {}
    for label, host in (("direct", engine.host), ("proxy", proxy.host)):
        conn = Conn(host)
        conn.send("GET", path)
        response = conn.read()
        conn.close()
        document = response.json()
        answers[label] = (
            response.status, response.header("api-version"), response.header("content-type"),
            sorted(document) if isinstance(document, dict) else len(document),
        )
    assert answers["proxy"] == answers["direct"]
    assert answers["direct"][0] == (404 if "nobody" in path else 200)


def test_grpc_over_h2c_passes(engine, proxy):
    """BuildKit's gRPC API, as buildx and SDKs reach it: ``POST /grpc`` upgraded to h2c, then a
    real gRPC call (Control/ListWorkers) over HTTP/2 through the hijacked connection."""
    answers = {}
    for label, host in (("direct", engine.host), ("proxy", proxy.host)):
        sock = connect(host)
        sock.sendall(b"POST /grpc HTTP/1.1\r\nHost: api.moby.localhost\r\n"
                     b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n")
        reader = Conn(sock=sock)
        head = reader.read(head_only=True)
        assert head.status == 101 and head.header("upgrade") == "h2c"
        h2c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        h2c.initiate_connection()
        stream = h2c.get_next_available_stream_id()
        h2c.send_headers(stream, [
            (":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
            (":path", "/moby.buildkit.v1.Control/ListWorkers"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        h2c.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)  # an empty request
        sock.sendall(h2c.data_to_send())
        message, trailers, pending = b"", None, reader.buffer
        while trailers is None:
            chunk = pending or sock.recv(65536)
            pending = b""
            assert chunk, "the connection ended before the gRPC answer"
            for event in h2c.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    message += event.data
                    h2c.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
            sock.sendall(h2c.data_to_send())
        sock.close()
        assert trailers[b"grpc-status"] == b"0", trailers
        answers[label] = message
    assert b"moby" in answers["direct"]  # the daemon's one worker, named moby
    assert answers["proxy"] == answers["direct"]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What a process's descriptors point at, for a failure message."""
    return sorted(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(120)
def test_no_descriptors_leak_after_hijacks_and_abandoned_streams(engine, fresh_proxy, scratch):
    """Hijacked sessions that end either way, and streams their clients walk away from, leave
    the proxy with the descriptors it started with: every client and daemon connection closed."""
    proc, host = fresh_proxy
    baseline = fd_count(proc.pid)  # listening, before any client came
    name = scratch.name("fds")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sh", "-c",
              "while true; do echo tick; sleep 0.2; done"))
    # Hijacks ended by the container's side and by stdin's end.
    assert ok(docker(host, "exec", "-i", name, "cat", input=b"in\n")) == b"in\n"
    assert ok(docker(host, "run", "--rm", "-i", "busybox", "cat", input=b"run\n")) == b"run\n"
    # Streams and a hijack the client abandons midway.
    for args in (("logs", "-f", name), ("events",), ("attach", "--sig-proxy=false", name)):
        streaming = popen_docker(host, *args)
        if args[0] == "events":
            ok(docker(host, "pause", name))
            ok(docker(host, "unpause", name))
        reader = LineReader(streaming)
        assert reader.readline(10) is not None, f"docker {args[0]} printed nothing"
        end(streaming)
    assert wait_for(lambda: fd_count(proc.pid) <= baseline, 10), (
        f"{fd_count(proc.pid)} descriptors open, {baseline} before: {fd_targets(proc.pid)}"
    )
