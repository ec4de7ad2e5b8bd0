"""Adapter protocol v2 against the real daemon, checked by an adapter outside the SDK.

``hook_adapter.py`` (standard library only) records every call it gets, bytes included. Three
mappings of it share one endpoint: a version 1 one, which must get the 2015 payload byte for
byte, a version 2 one, and a version 2 one with ``credentials: true``. The same request is sent
through a unix listener, a plain TCP listener and a TLS listener that verifies client
certificates, and each payload's ``Client`` and ``Headers`` are checked field by field against
what the test knows of its own connection. Then answers that change headers: what a pre-hook
sets reaches the daemon, what a post-hook sets reaches the client, and a header the proxy owns
cannot be set.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import ssl
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from powerstrip_dev.processes import ProxyService, start_proxy, stop_process
from tests.e2e.conftest import docker, ok
from tests.e2e.test_hooks import HookAdapter, adapter, adapters_file, new_log  # noqa: F401
from tests.rawhttp import Conn, call
from tests.tlscerts import make_certs, make_client

pytestmark = pytest.mark.timeout(180)

SECRET = "c2VjcmV0LXBhc3N3b3Jk"  # what X-Registry-Auth carries: base64 of a password
ENDPOINT = "POST /*/containers/create"


def _config(hook: HookAdapter, log: str) -> str:
    return adapters_file(
        {ENDPOINT: {"pre": ["one", "two", "twocred"], "post": ["one", "two", "twocred"]}},
        {
            "one": hook.url(f"/record/{log}-one"),
            "two": {"url": hook.url(f"/record/{log}-two"), "protocol": 2},
            "twocred": {"url": hook.url(f"/record/{log}-twocred"), "protocol": 2,
                        "credentials": True},
        },
    )


@pytest.fixture(scope="module")
def pki() -> Iterator[dict[str, Path]]:
    top = Path(tempfile.mkdtemp(prefix="ps-v2-pki-"))
    (top / "authority").mkdir()
    authority = make_certs(top / "authority")
    client = make_client(top / "alice", authority, "alice", sans=("alice.example",))
    yield {"authority": authority, "client": client}
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def proxies(engine, adapter, pki) -> Iterator[tuple[str, dict[str, Any]]]:  # noqa: F811
    """One adapters file; a proxy with a unix and a plain TCP listener, and one with a TLS
    listener verifying client certificates. Yields the log prefix and each listener's host
    (and the two proxies, as ``plain-log`` and ``tls-log``)."""
    log = new_log()
    directory = Path(tempfile.mkdtemp(prefix="ps-v2-"))
    directory.chmod(0o755)
    config = directory / "adapters.yml"
    config.write_text(_config(adapter, log))
    socket_path = directory / "ps.sock"
    # The TCP listener first: the printed DOCKER_HOST names it, port resolved.
    plain = start_proxy(engine.host, "--listen", f"unix://{socket_path}", logdir=directory,
                        config=config, name="plain")
    authority = pki["authority"]
    tls = start_proxy(engine.host, "--tlsverify", "--tlscacert", str(authority / "ca.pem"),
                      "--tlscert", str(authority / "server-cert.pem"),
                      "--tlskey", str(authority / "server-key.pem"),
                      logdir=directory, config=config, name="tls")
    try:
        yield log, {"unix": f"unix://{socket_path}", "tcp": plain.docker_host,
                    "tls": tls.docker_host, "plain-log": plain, "tls-log": tls}
    finally:
        for proxy in (plain, tls):
            assert stop_process(proxy.proc) == 0, proxy.log()
        shutil.rmtree(directory, ignore_errors=True)


def _tls_socket(host: str, pki: dict[str, Path]) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki["authority"] / "ca.pem"))
    context.load_cert_chain(str(pki["client"] / "cert.pem"), str(pki["client"] / "key.pem"))
    address, port = host[len("tcp://"):].rsplit(":", 1)
    raw = socket.create_connection((address, int(port)), timeout=30)
    return context.wrap_socket(raw, server_hostname=address)


def _open(transport: str, host: str, pki: dict[str, Path]) -> socket.socket:
    if transport == "tls":
        return _tls_socket(host, pki)
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(host[len("unix://"):])
        return sock
    address, port = host[len("tcp://"):].rsplit(":", 1)
    return socket.create_connection((address, int(port)), timeout=30)


def _create(sock: socket.socket, name: str) -> tuple[int, bytes, str]:
    """A container create, with repeated and differently spelled headers and registry
    credentials; returns the status, the body and the target."""
    body = json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode()
    target = f"/v1.41/containers/create?name={name}"
    head = (
        f"POST {target} HTTP/1.1\r\n"
        "Host: powerstrip-e2e\r\n"
        "Content-Type: application/json\r\n"
        "User-Agent: ps-conformance/2\r\n"
        f"X-Registry-Auth: {SECRET}\r\n"
        "x-custom: one\r\n"
        "X-CUSTOM: two\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    conn = Conn(sock=sock)
    response = conn.read()
    return response.status, response.body, target


def _expected_client(transport: str, sock: socket.socket, host: str,
                     pki: dict[str, Path]) -> dict[str, Any]:
    if transport == "unix":
        groups = [grp.getgrgid(os.getgid()).gr_name]
        user = pwd.getpwuid(os.getuid()).pw_name
        groups += sorted(g.gr_name for g in grp.getgrall()
                         if user in g.gr_mem and g.gr_name not in groups)
        return {"Transport": "unix", "Address": host[len("unix://"):], "UID": os.getuid(),
                "GID": os.getgid(), "PID": os.getpid(), "User": user, "Groups": groups,
                "Certificate": None}
    local = sock.getsockname()
    address = f"{local[0]}:{local[1]}"
    certificate = None
    if transport == "tls":
        cert = x509.load_pem_x509_certificate((pki["client"] / "cert.pem").read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        certificate = {"Subject": "CN=alice", "CommonName": "alice",
                       "SANs": ["alice.example"], "SHA256": hashlib.sha256(der).hexdigest()}
    return {"Transport": transport, "Address": address, "UID": None, "GID": None,
            "PID": None, "User": None, "Groups": [], "Certificate": certificate}


@pytest.mark.parametrize("transport", ["unix", "tcp", "tls"])
def test_every_field_for_each_kind_of_client(engine, adapter, proxies, pki,  # noqa: F811
                                             transport) -> None:
    log, hosts = proxies
    host = hosts[transport]
    for suffix in ("one", "two", "twocred"):
        adapter_delete(adapter, f"{log}-{suffix}")
    name = f"ps-v2-{transport}-{uuid.uuid4().hex[:8]}"
    sock = _open(transport, host, pki)
    try:
        status, response_body, target = _create(sock, name)
        expected_client = _expected_client(transport, sock, host, pki)
    finally:
        sock.close()
    try:
        assert status == 201, response_body
        one, two, twocred = (adapter.entries(f"{log}-{s}") for s in ("one", "two", "twocred"))
        assert [e["Call"]["Type"] for e in one] == ["pre-hook", "post-hook"]
        assert [e["Call"]["Type"] for e in two] == ["pre-hook", "post-hook"]
        assert [e["Call"]["Type"] for e in twocred] == ["pre-hook", "post-hook"]
        # One client request: every call carries the same Powerstrip-Call.
        ids = {e["CallId"] for e in (*one, *two, *twocred)}
        assert len(ids) == 1 and None not in ids, ids

        pre, post = two[0]["Call"], two[1]["Call"]
        assert list(pre) == ["PowerstripProtocolVersion", "Type", "Client", "ClientRequest"]
        assert list(post) == ["PowerstripProtocolVersion", "Type", "Client", "ClientRequest",
                              "ServerResponse"]
        assert pre["PowerstripProtocolVersion"] == post["PowerstripProtocolVersion"] == 2
        assert pre["Client"] == expected_client
        assert post["Client"] == expected_client
        request = pre["ClientRequest"]
        assert list(request) == ["Method", "Request", "Body", "Headers"]
        assert (request["Method"], request["Request"]) == ("POST", target)
        assert json.loads(request["Body"]) == {"Image": "busybox", "Cmd": ["true"]}
        headers = request["Headers"]
        assert headers["Content-Type"] == ["application/json"]
        assert headers["User-Agent"] == ["ps-conformance/2"]
        assert headers["Host"] == ["powerstrip-e2e"]
        assert headers["X-Custom"] == ["one", "two"]  # two spellings, one canonical key
        assert headers["X-Registry-Auth"] == ["<redacted>"]
        assert headers["Content-Length"] == [str(len(request["Body"]))]
        assert all(name == name.title() or name == "Content-Type" for name in headers)
        assert post["ClientRequest"] == request
        response = post["ServerResponse"]
        assert list(response) == ["ContentType", "Body", "Code", "Headers"]
        assert response["Code"] == 201
        assert json.loads(response["Body"]) == json.loads(response_body)
        assert response["Headers"]["Content-Type"] == ["application/json"]
        assert response["Headers"]["Api-Version"], response["Headers"]
        assert response["Headers"]["Server"][0].startswith("Docker/")

        # credentials: true shows what the client sent; nothing else differs.
        cred_pre, cred_post = twocred[0]["Call"], twocred[1]["Call"]
        assert cred_pre["ClientRequest"]["Headers"]["X-Registry-Auth"] == [SECRET]
        assert {**cred_pre["ClientRequest"]["Headers"], "X-Registry-Auth": ["<redacted>"]} \
            == headers
        assert cred_pre["Client"] == expected_client
        assert cred_post["ServerResponse"] == response
        assert SECRET not in two[0]["Raw"] and SECRET not in two[1]["Raw"]

        # The proxy's log of hook calls names who asked.
        proxy_log = hosts["tls-log" if transport == "tls" else "plain-log"].log()
        named = {"unix": f"from unix user {expected_client['User']} (uid {os.getuid()})",
                 "tcp": f"from tcp client {expected_client['Address']}",
                 "tls": f"from tls client CN=alice ({expected_client['Address']})"}[transport]
        assert f"adapter two pre-hook for POST {target} {named}" in proxy_log, proxy_log

        # The version 1 mapping gets the 2015 payload, byte for byte.
        assert one[0]["Raw"] == json.dumps({
            "PowerstripProtocolVersion": 1, "Type": "pre-hook",
            "ClientRequest": {"Method": "POST", "Request": target, "Body": request["Body"]},
        })
        assert one[1]["Raw"] == json.dumps({
            "PowerstripProtocolVersion": 1, "Type": "post-hook",
            "ClientRequest": {"Method": "POST", "Request": target, "Body": request["Body"]},
            "ServerResponse": {"ContentType": response["ContentType"],
                               "Body": response["Body"], "Code": 201},
        })
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")


def adapter_delete(hook: HookAdapter, name: str) -> None:
    """Empty the adapter's log ``name``."""
    request = urllib.request.Request(hook.url(f"/log/{name}"), method="DELETE")
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_the_docker_cli_over_tls_is_named_by_its_certificate(engine, adapter, proxies,  # noqa: F811
                                                            pki) -> None:
    log, hosts = proxies
    adapter_delete(adapter, f"{log}-two")
    name = f"ps-v2-cli-{uuid.uuid4().hex[:8]}"
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(pki["client"])}
    try:
        ok(docker(hosts["tls"], "create", "--name", name, "busybox", "true", env_extra=env,
                  timeout=60))
        calls = [e["Call"] for e in adapter.entries(f"{log}-two")]
        assert calls and calls[0]["Type"] == "pre-hook"
        client = calls[0]["Client"]
        assert client["Transport"] == "tls"
        assert client["Certificate"]["CommonName"] == "alice"
        assert client["Certificate"]["SANs"] == ["alice.example"]
        agent = calls[0]["ClientRequest"]["Headers"]["User-Agent"][0]
        assert agent.startswith("Docker-Client/"), agent
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")


# -- answers that change headers ------------------------------------------------------------


@pytest.fixture
def header_proxy(engine, adapter, tmp_path) -> Iterator[Any]:  # noqa: F811
    started: list[ProxyService] = []

    def start(pre: str | None, post: str | None) -> str:
        hooks: dict[str, list[str]] = {}
        adapters: dict[str, Any] = {}
        if pre is not None:
            hooks["pre"] = ["pre"]
            adapters["pre"] = {"url": adapter.url(pre), "protocol": 2}
        if post is not None:
            hooks["post"] = ["post"]
            adapters["post"] = {"url": adapter.url(post), "protocol": 2}
        directory = tmp_path / f"p{len(started)}"
        directory.mkdir()
        config = directory / "adapters.yml"
        config.write_text(adapters_file({ENDPOINT: hooks}, adapters))
        proxy = start_proxy(engine.host, logdir=directory, config=config, name="headers")
        started.append(proxy)
        return proxy.docker_host

    yield start
    for proxy in started:
        assert stop_process(proxy.proc) == 0


def _create_via(host: str, name: str) -> Any:
    body = json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode()
    return call(host, "POST", f"/v1.41/containers/create?name={name}", body,
                {"Content-Type": "application/json"})


def test_a_header_a_pre_hook_sets_reaches_the_daemon(engine, header_proxy) -> None:
    # The daemon reads a create body only as JSON: a Content-Type it cannot take shows that
    # what the hook answered is what it received.
    host = header_proxy("/headers?set=pre:Content-Type:text/plain", None)
    name = f"ps-v2-ct-{uuid.uuid4().hex[:8]}"
    try:
        response = _create_via(host, name)
        assert response.status == 400, response
        assert "text/plain" in response.message()
        assert call(engine.host, "GET", f"/v1.41/containers/{name}/json").status == 404
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")


def test_a_header_a_post_hook_sets_reaches_the_client(engine, header_proxy) -> None:
    host = header_proxy(None, "/headers?set=post:X-Powerstrip-Seen:yes&drop=post:Server")
    name = f"ps-v2-seen-{uuid.uuid4().hex[:8]}"
    try:
        response = _create_via(host, name)
        assert response.status == 201, response
        assert response.header("X-Powerstrip-Seen") == "yes"
        assert response.header("Server") is None
        assert response.header("Api-Version")  # the rest as the daemon sent it
        assert json.loads(response.body)["Id"]
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")


@pytest.mark.parametrize("phase,header", [("pre", "Transfer-Encoding"), ("pre", "Host"),
                                          ("post", "Connection"), ("post", "Content-Length")])
def test_a_header_the_proxy_owns_cannot_be_set(engine, header_proxy, phase, header) -> None:
    behaviour = f"/headers?set={phase}:{header}:forged"
    host = header_proxy(behaviour if phase == "pre" else None,
                        behaviour if phase == "post" else None)
    name = f"ps-v2-own-{uuid.uuid4().hex[:8]}"
    try:
        response = _create_via(host, name)
        assert response.status == 502, response
        message = response.message()
        assert header in message and "owns" in message and f"adapter {phase}" in message
        assert "from tcp client 127.0.0.1:" in message  # who asked, named
        if phase == "pre":
            assert call(engine.host, "GET", f"/v1.41/containers/{name}/json").status == 404
    finally:
        call(engine.host, "DELETE", f"/v1.41/containers/{name}?force=1")
