"""The policy adapter end to end: the real daemon, the real proxy, ``adapters/policy.py``.

Every gap test first sends its request *direct* to the daemon and shows that the daemon really
does the forbidden thing (inspecting the container, exec session or volume it made), so the
test cannot pass because the request was harmless; then it sends the same bytes through the
proxy and expects the policy's 403, naming the rule, with nothing made. docs/policy.md has the
table these cases come from.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powerstrip_dev.engine import Engine
from tests.e2e.conftest import (
    REPO,
    AdapterProcess,
    ProxyProcess,
    Scratch,
    docker,
    launch_proxy,
    ok,
    start_adapter,
    stop_proxy,
)
from tests.rawhttp import Conn, call, connect

POLICY = REPO / "adapters" / "policy.py"
ENDPOINTS = [
    "POST /*/containers/create", "POST /*/containers/*/start", "POST /*/containers/*/exec",
    "POST /*/volumes/create", "POST /*/build", "POST /*/images/*/tag", "POST /*/commit",
    "POST /*/images/create", "POST /*/images/load",
]


@dataclass
class Policy:
    """The proxy with the policy adapter hooked on every endpoint docs/policy.md lists."""

    proxy: ProxyProcess
    adapter: AdapterProcess
    allowed: Path  # a host directory bind mounts may use
    engine: Engine


@pytest.fixture(scope="module")
def policy(engine: Engine) -> Iterator[Policy]:
    """The policy adapter with rules of the test's own, and a proxy in front of ``engine``."""
    workdir = Path(tempfile.mkdtemp(prefix="ps-policy-"))
    allowed = workdir / "allowed"
    allowed.mkdir()
    rules = workdir / "rules.yml"
    rules.write_text(
        "version: 1\n"
        "rules:\n"
        "  privileged: forbid\n"
        "  host_network: forbid\n"
        "  host_pid: forbid\n"
        "  cap_add: forbid\n"
        f"  bind_mounts: {{allow: [{allowed}]}}\n"
        "  images: {allow: [busybox]}\n"
    )
    adapter = start_adapter(
        [sys.executable, str(POLICY), "--listen", "127.0.0.1:0", "--rules", str(rules)],
        "policy-adapter")
    try:
        config = workdir / "adapters.yml"
        config.write_text(
            "version: 1\nendpoints:\n"
            + "".join(f'  "{endpoint}": {{pre: [policy]}}\n' for endpoint in ENDPOINTS)
            + f"adapters:\n  policy: {adapter.url}\n"
        )
        proxy = launch_proxy(engine.host, config)
        try:
            yield Policy(proxy, adapter, allowed, engine)
        finally:
            stop_proxy(proxy)
    finally:
        log = adapter.log()
        adapter.stop()
        assert "Traceback" not in log, log
        shutil.rmtree(workdir, ignore_errors=True)


# -- raw HTTP, byte for byte ----------------------------------------------------------------------


def send(
    host: str, method: str, target: str, body: bytes | str | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, Any]:
    """Send one request to ``host`` (``unix://`` or ``tcp://``) exactly as given; the status and
    the body, parsed when it is JSON."""
    headers = {"Content-Type": content_type} if content_type else {}
    if isinstance(body, str):
        body = body.encode()
    if body is None and method in ("POST", "PUT"):
        body = b""  # a length, as HTTP clients send for these methods
    answer = call(host, method, target, body, headers)
    try:
        return answer.status, answer.json()
    except ValueError:
        return answer.status, answer.body.decode(errors="replace")


def inspect(engine: Engine, kind: str, name: str) -> dict[str, Any]:
    """``GET /{kind}/{name}/json`` (containers, exec, volumes: ``/volumes/{name}``) direct."""
    path = f"/volumes/{name}" if kind == "volumes" else f"/{kind}/{name}/json"
    status, data = send(engine.host, "GET", path, content_type=None)
    assert status == 200, data
    return data


def exists(engine: Engine, kind: str, name: str) -> bool:
    path = f"/volumes/{name}" if kind == "volumes" else f"/{kind}/{name}/json"
    return send(engine.host, "GET", path, content_type=None)[0] == 200


def assert_refused(answer: tuple[int, Any], rule: str) -> None:
    status, data = answer
    assert status == 403, (status, data)
    assert f"refused by policy rule {rule}: " in data["message"], data


# -- allowed requests pass ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_docker_run_busybox_passes(policy: Policy, scratch: Scratch) -> None:
    out = ok(docker(policy.proxy.host, "run", "--rm", "busybox", "echo", "through policy"))
    assert out == b"through policy\n"
    (policy.allowed / "data").write_text("allowed\n")
    out = ok(docker(policy.proxy.host, "run", "--rm", "-v", f"{policy.allowed}:/d:ro",
                    "--name", scratch.name("ok"), "docker.io/library/busybox:latest",
                    "cat", "/d/data"))
    assert out == b"allowed\n"
    name = scratch.name("ok")
    ok(docker(policy.proxy.host, "run", "-d", "--name", name, "busybox", "sleep", "30"))
    assert ok(docker(policy.proxy.host, "exec", name, "echo", "exec ok")) == b"exec ok\n"


# -- the docker CLI gets the refusal ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flags", "rule"), [
    (["--privileged"], "privileged"),
    (["--network", "host"], "host_network"),
    (["--pid", "host"], "host_pid"),
    (["--cap-add", "sys_admin"], "cap_add"),
    (["-v", "/etc:/h"], "bind_mounts"),
    (["--mount", "type=bind,src=/etc,dst=/h"], "bind_mounts"),
])
def test_docker_cli_prints_the_refusal(
    policy: Policy, scratch: Scratch, flags: list[str], rule: str
) -> None:
    name = scratch.name("cli")
    result = docker(policy.proxy.host, "run", "--rm", "--name", name, *flags, "busybox", "true")
    assert result.returncode != 0
    assert "Error response from daemon: " in result.stderr.decode()
    assert f"refused by policy rule {rule}: " in result.stderr.decode()
    assert not exists(policy.engine, "containers", name)


@pytest.mark.timeout(60)
def test_cli_refusals_for_images_exec_and_volumes(policy: Policy, scratch: Scratch) -> None:
    host = policy.proxy.host
    ok(docker(policy.engine.host, "tag", "busybox:latest", scratch.name("other")))
    result = docker(host, "run", "--rm", scratch.names[-1], "true")
    assert "refused by policy rule images: " in result.stderr.decode()
    result = docker(host, "tag", scratch.names[-1], "busybox:mine")
    assert "refused by policy rule images: " in result.stderr.decode()
    name = scratch.name("exec")
    ok(docker(host, "run", "-d", "--name", name, "busybox", "sleep", "30"))
    result = docker(host, "exec", "--privileged", name, "true")
    assert "refused by policy rule privileged: " in result.stderr.decode()
    volume = scratch.name("vol")
    result = docker(host, "volume", "create", "-o", "type=none", "-o", "o=bind",
                    "-o", "device=/etc", volume)
    assert "refused by policy rule bind_mounts: " in result.stderr.decode()
    assert not exists(policy.engine, "volumes", volume)


# -- the gaps: what the daemon honours, and the policy refuses -------------------------------------

OTHER_PREFIX = "ps-policy-other-"


@dataclass
class CreateGap:
    """A create body the daemon honours with a forbidden effect, which ``effect`` checks on the
    container it made."""

    body: bytes | str
    rule: str
    effect: Callable[[dict[str, Any]], bool]
    target: str = "/v1.41/containers/create"
    content_type: str = "application/json"
    #: What the proxy's own 400 says when it refuses the body before any hook sees it.
    by_proxy: str | None = None


def privileged(info: dict[str, Any]) -> bool:
    return info["HostConfig"]["Privileged"] is True


def binds_etc(info: dict[str, Any]) -> bool:
    return any(m["Type"] == "bind" and m["Source"] == "/etc" for m in info["Mounts"])


CREATE_GAPS = {
    "lower-case keys": CreateGap('{"Image":"busybox","hostconfig":{"privileged":true}}',
                                 "privileged", privileged),
    "long s and KELVIN-free upper case": CreateGap(
        '{"Image":"busybox","Ho\u017ftconfig":{"PRIVILEGED":true}}', "privileged", privileged),
    "duplicate HostConfig merges": CreateGap(
        '{"Image":"busybox","HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"none"}}',
        "privileged", privileged),
    "top-level HostConfig field": CreateGap('{"Image":"busybox","Privileged":true}', "privileged",
                                            privileged),
    "top-level field, HostConfig null": CreateGap(
        '{"Image":"busybox","Privileged":true,"HostConfig":null}', "privileged", privileged),
    "data after the JSON value": CreateGap(
        '{"Image":"busybox","HostConfig":{"Privileged":true}} and then some', "privileged",
        privileged),
    "JSON that is not UTF-8": CreateGap(
        b'{"Image":"busybox","HostConfig":{"Privileged":true},"Labels":{"x":"\xff"}}',
        "privileged", privileged),
    "Content-Type in capitals": CreateGap(
        '{"Image":"busybox","HostConfig":{"Privileged":true}}', "privileged", privileged,
        content_type="APPLICATION/JSON; charset=utf-8"),
    "percent-encoded path": CreateGap(
        '{"Image":"busybox","HostConfig":{"PidMode":"host"}}', "host_pid",
        lambda info: info["HostConfig"]["PidMode"] == "host",
        target="/v1.41%2Fcontainers%2F%63reate"),
    "unversioned path": CreateGap('{"Image":"busybox","HostConfig":{"NetworkMode":"host"}}',
                                  "host_network",
                                  lambda info: info["HostConfig"]["NetworkMode"] == "host",
                                  target="/containers/create"),
    "old version path": CreateGap('{"Image":"busybox","HostConfig":{"CapAdd":"SYS_ADMIN"}}',
                                  "cap_add",
                                  lambda info: info["HostConfig"]["CapAdd"] == ["SYS_ADMIN"],
                                  target="/v1.23/containers/create"),
    "capability in another spelling": CreateGap(
        '{"Image":"busybox","HostConfig":{"CapAdd":["cap_\u017fys_admin"]}}', "cap_add",
        lambda info: info["HostConfig"]["CapAdd"] == ["cap_\u017fys_admin"]),
    "bind source with ..": CreateGap(
        '{"Image":"busybox","HostConfig":{"Binds":["ALLOWED/../../../../../etc:/h"]}}',
        "bind_mounts", binds_etc),
    "bind source //etc/": CreateGap('{"Image":"busybox","HostConfig":{"Binds":["//etc/:/h"]}}',
                                    "bind_mounts", binds_etc),
    "mount elements merge across duplicates": CreateGap(
        '{"Image":"busybox","HostConfig":{"Mounts":[{"Source":"/etc","Target":"/h"}]},'
        '"HostConfig":{"Mounts":[{"Type":"bind"}]}}', "bind_mounts", binds_etc,
        by_proxy="given twice as an array of objects"),
    "mount with folded field names": CreateGap(
        '{"Image":"busybox","HostConfig":{"Mounts":[{"type":"bind","\u017fource":"/etc",'
        '"TARGET":"/h"}]}}', "bind_mounts", binds_etc),
    "volume mount that binds": CreateGap(
        '{"Image":"busybox","HostConfig":{"Mounts":[{"Type":"volume","Target":"/h",'
        '"VolumeOptions":{"DriverConfig":{"Options":{"type":"none","o":"bind",'
        '"device":"/etc"}}}}]}}', "bind_mounts",
        lambda info: info["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"]
        ["device"] == "/etc"),
    "symbolic link in an allowed path": CreateGap(
        '{"Image":"busybox","HostConfig":{"Binds":["ALLOWED/link:/h"]}}', "bind_mounts",
        lambda info: info["HostConfig"]["Binds"][0].endswith("/link:/h")),
    "image by short ID": CreateGap('{"Image":"SHORT_ID"}', "images",
                                   lambda info: info["Config"]["Image"] != "busybox"),
    "image by sha256: prefix": CreateGap('{"Image":"sha256:SHORT_ID"}', "images",
                                         lambda info: info["Config"]["Image"] != "busybox"),
    "image key twice": CreateGap('{"Image":"busybox","image":"OTHER"}', "images",
                                 lambda info: info["Config"]["Image"].startswith(OTHER_PREFIX)),
}


@pytest.fixture(scope="module")
def image_names(policy: Policy) -> Iterator[dict[str, str]]:
    """Placeholders in the bodies: busybox's short ID, another image's name, the allowed dir."""
    engine = policy.engine
    image_id = inspect(engine, "images", "busybox:latest")["Id"].removeprefix("sha256:")
    other = f"{OTHER_PREFIX}{image_id[:6]}"
    ok(docker(engine.host, "tag", "busybox:latest", other))
    (policy.allowed / "link").symlink_to("/etc")
    try:
        yield {"SHORT_ID": image_id[:12], "OTHER": other, "ALLOWED": str(policy.allowed)}
    finally:
        docker(engine.host, "rmi", other)


def fill(body: bytes | str, names: dict[str, str]) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    for placeholder, value in names.items():
        data = data.replace(placeholder.encode(), value.encode())
    return data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CREATE_GAPS), ids=list(CREATE_GAPS))
def test_create_gap(
    policy: Policy, scratch: Scratch, image_names: dict[str, str], case: str
) -> None:
    gap = CREATE_GAPS[case]
    body = fill(gap.body, image_names)
    direct, proxied = scratch.name("direct"), scratch.name("proxied")
    status, data = send(policy.engine.host, "POST", f"{gap.target}?name={direct}", body,
                        gap.content_type)
    assert status == 201, data
    assert gap.effect(inspect(policy.engine, "containers", direct)), "the daemon did not do it"
    answer = send(policy.proxy.host, "POST", f"{gap.target}?name={proxied}", body,
                  gap.content_type)
    if gap.by_proxy is None:
        assert_refused(answer, gap.rule)
    else:
        assert answer[0] == 400 and gap.by_proxy in answer[1]["message"], answer
    assert not exists(policy.engine, "containers", proxied)


@pytest.mark.timeout(60)
def test_added_capability_in_another_spelling_is_granted(policy: Policy, scratch: Scratch) -> None:
    """What the daemon does with ``ſys_admin``: the container really gets CAP_SYS_ADMIN."""
    name = scratch.name("cap")
    body = {"Image": "busybox", "Cmd": ["grep", "CapEff", "/proc/self/status"],
            "HostConfig": {"CapAdd": ["\u017fys_admin"]}}
    status, data = send(policy.engine.host, "POST", f"/containers/create?name={name}",
                        json.dumps(body))
    assert status == 201, data
    ok(docker(policy.engine.host, "start", "-a", name))
    effective = int(ok(docker(policy.engine.host, "logs", name)).split()[-1], 16)
    assert effective & (1 << 21), "CAP_SYS_ADMIN (bit 21) not granted"
    assert_refused(send(policy.proxy.host, "POST", "/containers/create", json.dumps(body)),
                   "cap_add")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_a_body_the_policy_cannot_see_is_refused(policy: Policy, content_type: str | None) -> None:
    """The daemon refuses these too (400); the policy must not wave them through unread."""
    body = '{"Image":"busybox","HostConfig":{"Privileged":true}}'
    status, _ = send(policy.engine.host, "POST", "/containers/create", body, content_type)
    assert status == 400
    assert_refused(send(policy.proxy.host, "POST", "/containers/create", body, content_type),
                   "body")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "rule"), [
    ('{"Privileged":true}', "privileged"),
    ('{"hostconfig":{"PRIVILEGED":true}}', "privileged"),
    (b'{"Privileged":true,"x":"\xff"}', "privileged"),
])
def test_start_with_a_host_config_before_api_1_24(
    policy: Policy, scratch: Scratch, body: bytes | str, rule: str
) -> None:
    engine = policy.engine
    direct, proxied = scratch.name("start"), scratch.name("start")
    for name in (direct, proxied):
        status, data = send(engine.host, "POST", f"/containers/create?name={name}",
                            '{"Image":"busybox","Cmd":["true"]}')
        assert status == 201, data
    # The daemon applies the HostConfig, then starts (a VM without every capability fails the
    # start of a privileged container, after the HostConfig has changed).
    send(engine.host, "POST", f"/v1.23/containers/{direct}/start", body)
    assert privileged(inspect(engine, "containers", direct))
    assert_refused(send(policy.proxy.host, "POST", f"/v1.23/containers/{proxied}/start", body),
                   rule)
    assert not privileged(inspect(engine, "containers", proxied))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    '{"Cmd":["true"],"Privileged":true}',
    '{"Cmd":["true"],"PRIVILEGED":true} and then some',
    '{"Cmd":["true"],"privileged":false,"Privileged":true}',
])
def test_privileged_exec(policy: Policy, scratch: Scratch, body: str) -> None:
    engine = policy.engine
    name = scratch.name("exec")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "30"))
    status, data = send(engine.host, "POST", f"/containers/{name}/exec", body)
    assert status == 201, data
    assert inspect(engine, "exec", data["Id"])["ProcessConfig"]["privileged"] is True
    assert_refused(send(policy.proxy.host, "POST", f"/v1.41/containers/{name}/exec", body),
                   "privileged")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opts", [
    '"DriverOpts":{"type":"none","o":"bind","device":"/etc"}',
    '"DriverOpts":{"device":"/etc"},"driveropts":{"type":"none","o":"rbind"}',
    '"Driveropts":{"type":"none","o":"bind","device":"//etc/../etc/"}',
])
def test_volume_that_binds_a_host_path(policy: Policy, scratch: Scratch, opts: str) -> None:
    engine = policy.engine
    direct, proxied = scratch.name("vol"), scratch.name("vol")
    status, data = send(engine.host, "POST", "/volumes/create", f'{{"Name":"{direct}",{opts}}}')
    assert status == 201, data
    # The daemon mounts /etc into whoever uses the volume.
    result = ok(docker(engine.host, "run", "--rm", "-v", f"{direct}:/h", "busybox",
                       "test", "-f", "/h/passwd", "-a", "-d", "/h/ssl"))
    assert result == b""
    answer = send(policy.proxy.host, "POST", "/v1.41/volumes/create",
                  f'{{"Name":"{proxied}",{opts}}}')
    assert_refused(answer, "bind_mounts")
    assert not exists(engine, "volumes", proxied)


@pytest.mark.timeout(60)
def test_form_encoded_parameters_never_reach_the_daemon(policy: Policy, scratch: Scratch) -> None:
    """The daemon reads a form-encoded body's values as parameters, over the query's; adapters
    cannot see them, so the proxy refuses such bodies on hooked endpoints."""
    other, direct_tag, proxied_tag = scratch.name("formsrc"), scratch.name("t"), scratch.name("t")
    ok(docker(policy.engine.host, "tag", "busybox:latest", other))
    form = "application/x-www-form-urlencoded"
    status, data = send(policy.engine.host, "POST", f"/v1.41/images/{other}/tag",
                        f"repo=busybox&tag={direct_tag}", form)
    assert status == 201, data
    assert exists(policy.engine, "images", f"busybox:{direct_tag}"), "the daemon did not do it"
    docker(policy.engine.host, "rmi", f"busybox:{direct_tag}")
    status, data = send(policy.proxy.host, "POST", f"/v1.41/images/{other}/tag",
                        f"repo=busybox&tag={proxied_tag}", form)
    assert status == 400 and "form-encoded" in data["message"], data
    assert not exists(policy.engine, "images", f"busybox:{proxied_tag}")
    body = '{"Image":"busybox","HostConfig":{"Privileged":true}}'
    status, data = send(policy.proxy.host, "POST", "/containers/create", body, form)
    assert status == 400 and "form-encoded" in data["message"], data


@pytest.mark.timeout(60)
def test_naming_an_image_busybox(policy: Policy, scratch: Scratch) -> None:
    """``docker tag other busybox:x`` would make ``docker run busybox:x`` run ``other``."""
    other = scratch.name("other")
    ok(docker(policy.engine.host, "tag", "busybox:latest", other))
    target = f"/v1.41/images/{other}/tag?repo=docker.io/library/busybox&tag=renamed"
    assert_refused(send(policy.proxy.host, "POST", target, content_type=None), "images")
    assert not exists(policy.engine, "images", "busybox:renamed")
    answer = send(policy.proxy.host, "POST", "/v1.41/build?t=busybox:built", b"",
                  "application/x-tar")
    assert_refused(answer, "images")
    answer = send(policy.proxy.host, "POST", "/v1.41/build?networkmode=host", b"",
                  "application/x-tar")
    assert_refused(answer, "host_network")


# -- found by review ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_repo_carrying_its_own_tag_still_names_the_repository(
    policy: Policy, scratch: Scratch
) -> None:
    """dockerd drops repo's own tag and applies the tag parameter: ``repo=busybox:x&tag=T``
    names busybox:T."""
    engine = policy.engine
    other, direct_tag, proxied_tag = scratch.name("evil"), scratch.name("t"), scratch.name("t")
    ok(docker(engine.host, "tag", "busybox:latest", other))
    status, data = send(engine.host, "POST",
                        f"/v1.41/images/{other}/tag?repo=busybox:x&tag={direct_tag}",
                        content_type=None)
    assert status == 201, data
    assert exists(engine, "images", f"busybox:{direct_tag}"), "the daemon did not do it"
    docker(engine.host, "rmi", f"busybox:{direct_tag}")
    answer = send(policy.proxy.host, "POST",
                  f"/v1.41/images/{other}/tag?repo=busybox:x&tag={proxied_tag}", content_type=None)
    assert_refused(answer, "images")
    assert not exists(engine, "images", f"busybox:{proxied_tag}")


RELATIVE_ETC = "../../../../../../../etc"


@pytest.mark.timeout(60)
def test_a_volume_on_a_relative_device_path(policy: Policy, scratch: Scratch) -> None:
    """The local driver mounts a relative device against dockerd's working directory."""
    engine = policy.engine
    direct, proxied, cli = scratch.name("rel"), scratch.name("rel"), scratch.name("rel")
    opts = f'"DriverOpts":{{"type":"none","o":"bind","device":"{RELATIVE_ETC}"}}'
    status, data = send(engine.host, "POST", "/v1.41/volumes/create",
                        f'{{"Name":"{direct}",{opts}}}')
    assert status == 201, data
    ok(docker(engine.host, "run", "--rm", "-v", f"{direct}:/h", "busybox", "test", "-f",
              "/h/passwd"))  # the host's /etc: the daemon did it
    answer = send(policy.proxy.host, "POST", "/v1.41/volumes/create",
                  f'{{"Name":"{proxied}",{opts}}}')
    assert_refused(answer, "bind_mounts")
    assert not exists(engine, "volumes", proxied)
    refused = docker(policy.proxy.host, "run", "--rm", "--mount",
                     f"type=volume,source={cli},target=/h,volume-opt=type=none,"
                     f"volume-opt=o=bind,volume-opt=device={RELATIVE_ETC}",
                     "busybox", "true")
    assert refused.returncode != 0
    assert b"refused by policy rule bind_mounts" in refused.stderr, refused.stderr
    assert not exists(engine, "volumes", cli)


def send_raw(host: str, head: str, body: bytes) -> tuple[int, bytes]:
    """Send a request head written by hand (any headers, repeated or not) and a body; the
    status and the answer's body."""
    with connect(host) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode()
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = Conn(sock=sock).read()
    return answer.status, answer.body


@pytest.mark.timeout(60)
def test_two_content_types(policy: Policy, scratch: Scratch) -> None:
    """dockerd reads the first of two Content-Type headers: with JSON first and text second, a
    reader of the last would show adapters no body while the daemon applies it."""
    engine = policy.engine
    direct, proxied = scratch.name("ct"), scratch.name("ct")
    for name in (direct, proxied):
        status, data = send(engine.host, "POST", f"/containers/create?name={name}",
                            '{"Image":"busybox","Cmd":["true"]}')
        assert status == 201, data
    body = b'{"Privileged":true}'
    for host, name in ((engine.host, direct), (policy.proxy.host, proxied)):
        head = (f"POST /v1.23/containers/{name}/start HTTP/1.1\nHost: x\n"
                "Content-Type: application/json\nContent-Type: text/plain\n")
        status, answer = send_raw(host, head, body)
        if host == engine.host:
            assert privileged(inspect(engine, "containers", direct)), "the daemon did not do it"
        else:
            assert status == 400 and b"more than one Content-Type" in answer, answer
    assert not privileged(inspect(engine, "containers", proxied))
