"""Docker AuthZ plugins as Powerstrip adapters: an adapter mapping names a plugin
(``{plugin: authz, name: NAME}``, found as dockerd finds it, or ``socket: unix:///PATH``), and
Powerstrip activates it and calls ``AuthZReq`` before the daemon and ``AuthZRes`` after it, with
the fields dockerd sends. The plugin here is written from Docker's documentation with the
standard library only, as any AuthZ plugin for dockerd is."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import socketserver
import threading
import time
from base64 import b64decode
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from powerstrip.testing import short_tmpdir
from powerstrip_dev.processes import start_proxy, stop_process
from tests.e2e.conftest import docker, ok, popen_docker, unique

pytestmark = pytest.mark.timeout(180)

NAME = "test-authz"


class AuthZPlugin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An AuthZ plugin as Docker's documentation describes one: it denies privileged
    containers and records every call."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.connections: list[socket.socket] = []
        super().__init__(str(path), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop as a process that exits does: every connection closed, the socket gone."""
        self.shutdown()
        self.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        Path(self.server_address).unlink(missing_ok=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.connection)

    def address_string(self) -> str:  # a unix peer has no host to name
        return "unix"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        document = json.loads(self.rfile.read(length) or b"null") or {}
        self.server.calls.append((self.path, document))
        if self.path == "/Plugin.Activate":
            answer = {"Implements": ["authz"]}
        elif self.path == "/AuthZPlugin.AuthZReq":
            body = json.loads(b64decode(document["RequestBody"])) \
                if document.get("RequestBody") else {}
            privileged = (body.get("HostConfig") or {}).get("Privileged")
            answer = ({"Allow": False, "Msg": "no privileged containers here"} if privileged
                      else {"Allow": True})
        elif self.path == "/AuthZPlugin.AuthZRes":
            answer = {"Allow": True}
        else:
            self.send_response(404)
            data = json.dumps({"Err": f"unknown {self.path}"}).encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    directory = Path(short_tmpdir("ps-plugins-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def proxy_with(engine, directory: Path, adapter: str):
    config = directory / "adapters.yml"
    config.write_text('version: 1\nendpoints:\n  "* *": {pre: [authz], post: [authz]}\n'
                      f"adapters:\n  authz: {adapter}\n")
    return start_proxy(engine.host, logdir=directory / "proxy", config=config,
                       env={"POWERSTRIP_PLUGIN_PATH": str(directory)})


def test_a_plugin_found_by_name_guards_powerstrip(engine, plugin_dir) -> None:
    plugin = AuthZPlugin(plugin_dir / f"{NAME}.sock")
    proxy = proxy_with(engine, plugin_dir, f"{{plugin: authz, name: {NAME}}}")
    name = unique("authz-ok")
    try:
        host = proxy.docker_host
        assert ok(docker(host, "run", "--rm", "--name", name, "busybox", "echo", "hi")) == b"hi\n"
        refused = docker(host, "run", "--rm", "--privileged", "busybox", "true")
        assert refused.returncode != 0
        assert (f"authorization denied by plugin {NAME}: no privileged containers here"
                in refused.stderr.decode()), refused.stderr
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
        plugin.stop()
    paths = [path for path, _ in plugin.calls]
    assert paths.count("/Plugin.Activate") == 1, paths  # activated once, as dockerd does
    creates = [doc for path, doc in plugin.calls if path == "/AuthZPlugin.AuthZReq"
               and "/containers/create" in doc.get("RequestUri", "")]
    assert len(creates) == 2
    first = creates[0]
    assert first["RequestMethod"] == "POST"
    assert json.loads(b64decode(first["RequestBody"]))["Image"] == "busybox"
    assert first["RequestHeaders"]["Content-Type"] == "application/json"
    assert "User" not in first  # no TLS user: dockerd would send none either
    answered = [doc for path, doc in plugin.calls if path == "/AuthZPlugin.AuthZRes"
                and "/containers/create" in doc.get("RequestUri", "")]
    assert len(answered) == 1 and answered[0]["ResponseStatusCode"] == 201
    assert json.loads(b64decode(answered[0]["ResponseBody"]))["Id"]


def test_a_plugin_restarting_is_waited_for_as_dockerd_waits(engine, plugin_dir) -> None:
    socket_path = plugin_dir / "restarting.sock"
    plugin = AuthZPlugin(socket_path)
    proxy = proxy_with(engine, plugin_dir, f'{{plugin: authz, socket: "unix://{socket_path}"}}')
    try:
        host = proxy.docker_host
        ok(docker(host, "version"))
        plugin.stop()  # the socket is gone
        started = time.monotonic()
        waiting = popen_docker(host, "version")
        time.sleep(1.5)
        plugin = AuthZPlugin(socket_path)  # and back, within the retry window
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert time.monotonic() - started >= 1.5
        assert "Plugin.Activate" not in [p for p, _ in plugin.calls]  # not activated again
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
        plugin.stop()
    assert "cannot connect" in proxy.log()


def test_a_plugin_that_is_not_there_fails_closed_naming_it(engine, plugin_dir) -> None:
    proxy = proxy_with(engine, plugin_dir, "{plugin: authz, name: nobody, timeout: 2}")
    try:
        result = docker(proxy.docker_host, "version")
        assert result.returncode != 0
        stderr = result.stderr.decode()
        assert "adapter authz (plugin nobody)" in stderr and "no plugin 'nobody'" in stderr, \
            stderr
        # A file that is no socket by that name is not a plugin either.
        (plugin_dir / "nobody.sock").write_text("")
        result = docker(proxy.docker_host, "version")
        assert result.returncode != 0 and "no plugin 'nobody'" in result.stderr.decode()
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()


def test_requests_that_come_together_share_one_activation(engine, plugin_dir) -> None:
    plugin = AuthZPlugin(plugin_dir / "together.sock")
    proxy = proxy_with(engine, plugin_dir, "{plugin: authz, name: together}")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: docker(proxy.docker_host, "version"), range(8)))
        assert all(result.returncode == 0 for result in results), \
            [result.stderr for result in results]
    finally:
        assert stop_process(proxy.proc) == 0, proxy.log()
        plugin.stop()
    assert [path for path, _ in plugin.calls].count("/Plugin.Activate") == 1
