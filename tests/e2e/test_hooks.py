"""Hooks end to end: the real proxy with an adapters file, a real adapter process
(``hook_adapter.py``, which uses no Powerstrip code) and the real daemon.

Each test starts its own proxy with the adapters file it needs (``hooked_proxy``) and checks what
the client got, what the daemon did, and, through the adapter's call log, what each hook saw and
in which order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import (
    REPO,
    LineReader,
    ProxyProcess,
    await_line,
    docker,
    end,
    launch_proxy,
    ok,
    popen_docker,
    short_tmpdir,
    start_null_adapter,
    stop_process,
    stop_proxy,
    wait_for,
)
from tests.rawhttp import Conn, Response, call, connect

HOOK_ADAPTER = Path(__file__).resolve().parent / "hook_adapter.py"


# -- the adapter ------------------------------------------------------------------------------


@dataclass
class HookAdapter:
    """``hook_adapter.py`` running on a TCP port and a unix socket."""

    port: int
    socket_path: str
    proc: subprocess.Popen

    def url(self, path: str) -> str:
        """The ``http://`` adapter URL of a behaviour, e.g. ``url("/record/x")``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def unix_url(self, path: str) -> str:
        """The ``unix://SOCKET:/PATH`` adapter URL of a behaviour."""
        return f"unix://{self.socket_path}:{path}"

    def entries(self, name: str) -> list[dict[str, Any]]:
        """The calls logged under ``name``, in arrival order: ``{"Path": ..., "Call": ...}``."""
        with urllib.request.urlopen(self.url(f"/log/{name}"), timeout=10) as answer:
            return json.loads(answer.read())

    def calls(self, name: str) -> list[dict[str, Any]]:
        """Just the hook call documents logged under ``name``."""
        return [entry["Call"] for entry in self.entries(name)]


def new_log() -> str:
    """A log name no other test uses."""
    return f"log-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def adapter() -> Iterator[HookAdapter]:
    """One adapter process for the module; tests keep apart by using their own log names."""
    workdir = Path(short_tmpdir("ps-ha-"))
    stdout_path, stderr_path = workdir / "stdout", workdir / "stderr"
    socket_path = str(workdir / "adapter.sock")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(HOOK_ADAPTER), "--port", "0", "--unix", socket_path],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
    try:
        await_line(proc, stdout_path, "READY", 10, "hook adapter", stderr_path)
        port = int(await_line(proc, stdout_path, "PORT ", 1, "hook adapter", stderr_path))
        yield HookAdapter(port, socket_path, proc)
    finally:
        stop_process(proc)
        for path in (stdout_path, stderr_path, Path(socket_path)):
            path.unlink(missing_ok=True)
        workdir.rmdir()


# -- adapters files and proxies ---------------------------------------------------------------


def adapters_file(
    endpoints: dict[str, dict[str, list[str]]],
    adapters: dict[str, str | dict[str, Any]],
    max_body: str | None = None,
) -> str:
    """An adapters file in the documented YAML format.

    ``endpoints`` maps ``"METHOD PATH-GLOB"`` to ``{"pre": [...], "post": [...]}``; an adapter
    is a URL or a mapping (``url``, ``timeout``, ``on_error``).
    """
    lines = ["version: 1"]
    if max_body is not None:
        lines.append(f"max_body: {max_body}")
    lines.append("endpoints:" if endpoints else "endpoints: {}")
    for key, hooks in endpoints.items():
        if not hooks:
            lines.append(f"  {json.dumps(key)}: {{}}")
            continue
        lines.append(f"  {json.dumps(key)}:")
        for kind in ("pre", "post"):
            if kind in hooks:
                lines.append(f"    {kind}: [{', '.join(hooks[kind])}]")
    lines.append("adapters:" if adapters else "adapters: {}")
    for name, spec in adapters.items():
        if isinstance(spec, str):
            lines.append(f"  {name}: {json.dumps(spec)}")
        else:
            fields = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.items())
            lines.append(f"  {name}: {{{fields}}}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, as editors and config management do, so the proxy's poll
    never reads half a file."""
    scratch_path = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    scratch_path.write_text(text)
    os.replace(scratch_path, path)


@pytest.fixture
def hooked_proxy(engine, tmp_path) -> Iterator[Callable[[str], ProxyProcess]]:
    """Start ``powerstrip serve --config FILE`` with the given adapters file text, in front of
    ``engine``; the proxy's ``config_path`` is that file. Each one must exit 0 on SIGTERM at
    teardown, without a traceback in its log."""
    started: list[ProxyProcess] = []

    def start(config_text: str) -> ProxyProcess:
        config = tmp_path / f"adapters-{len(started)}.yml"
        config.write_text(config_text)
        running = launch_proxy(engine.host, config)
        started.append(running)
        return running

    yield start
    failures = []
    for running in started:
        try:
            stop_proxy(running)
        except AssertionError as exc:  # stop every proxy, then report
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


# -- raw HTTP ---------------------------------------------------------------------------------


JSON = {"Content-Type": "application/json"}


def create_body(**extra: Any) -> bytes:
    """A container create body as the CLI would send it (the parts that matter here)."""
    return json.dumps({"Image": "busybox", "Cmd": ["true"], **extra},
                      ensure_ascii=False).encode()


def exists(engine, name: str) -> bool:
    """Whether the daemon knows a container called ``name`` (asked directly)."""
    return call(engine.host, "GET", f"/v1.41/containers/{name}/json").status == 200


def inspect(host: str, name: str, template: str) -> str:
    """``docker inspect --format template name``, stripped."""
    return ok(docker(host, "inspect", "--format", template, name)).decode().strip()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def running_container(host: str, name: str, command: str = "sleep 300") -> None:
    """Start ``name`` detached and wait until the daemon reports it running."""
    ok(docker(host, "run", "-d", "--name", name, "busybox", "sh", "-c", command))
    assert wait_for(lambda: inspect(host, name, "{{.State.Running}}") == "true", 10)


def request_paths(calls: list[dict[str, Any]]) -> list[str]:
    """``METHOD /path?query`` of each logged call's ClientRequest."""
    return [f"{c['ClientRequest']['Method']} {c['ClientRequest']['Request']}" for c in calls]


# -- pre-hooks --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_pre_hook_adds_env(engine, adapter, hooked_proxy, scratch):
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {"pre": ["env"]}},
        {"env": adapter.url("/add-env?name=ADDED_BY_HOOK&value=yes%20it%20was")},
    ))
    assert b"ADDED_BY_HOOK" not in ok(docker(engine.host, "run", "--rm", "busybox", "env"))
    out = ok(docker(proxy.host, "run", "--rm", "busybox", "env"))
    assert b"\nADDED_BY_HOOK=yes it was\n" in b"\n" + out, out

    # Alongside the client's own variables, on the daemon's record of the container.
    name = scratch.name("env")
    ok(docker(proxy.host, "create", "--name", name, "-e", "OWN=1", "busybox"))
    env = json.loads(inspect(engine.host, name, "{{json .Config.Env}}"))
    assert "OWN=1" in env and "ADDED_BY_HOOK=yes it was" in env


@pytest.mark.timeout(60)
def test_chained_pre_hooks_see_each_others_changes_in_file_order(
    engine, adapter, hooked_proxy, scratch
):
    log = new_log()
    # Two endpoints match a create; their lists concatenate in the order of the file.
    proxy = hooked_proxy(adapters_file(
        {
            "POST /*/containers/create": {"pre": ["first"]},
            "* /*/containers/*": {"pre": ["second"]},
        },
        # Defined in the other order: the endpoints' order is what counts.
        {
            "second": adapter.url(f"/add-env?name=SECOND&value=2&record={log}"),
            "first": adapter.url(f"/add-env?name=FIRST&value=1&record={log}"),
        },
    ))
    name = scratch.name("chain")
    ok(docker(proxy.host, "create", "--name", name, "-e", "OWN=0", "busybox"))

    entries = [e for e in adapter.entries(log)
               if "/containers/create" in e["Call"]["ClientRequest"]["Request"]]
    assert [e["Path"].split("&")[0] for e in entries] == [
        "/add-env?name=FIRST", "/add-env?name=SECOND"]
    seen_by_first = json.loads(entries[0]["Call"]["ClientRequest"]["Body"])["Env"]
    seen_by_second = json.loads(entries[1]["Call"]["ClientRequest"]["Body"])["Env"]
    assert seen_by_first == ["OWN=0"]
    assert seen_by_second == ["OWN=0", "FIRST=1"]
    env = json.loads(inspect(engine.host, name, "{{json .Config.Env}}"))
    assert env.index("OWN=0") < env.index("FIRST=1") < env.index("SECOND=2")


@pytest.mark.timeout(60)
def test_pre_hook_renames_the_container_in_the_query(engine, adapter, hooked_proxy, scratch):
    asked, renamed = scratch.name("asked"), scratch.name("renamed")
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {"pre": ["rename"]}},
        {"rename": adapter.url(f"/rename?to={renamed}")},
    ))
    container_id = ok(docker(proxy.host, "create", "--name", asked, "busybox")).strip().decode()
    assert inspect(engine.host, renamed, "{{.Id}}") == container_id
    assert inspect(engine.host, renamed, "{{.Name}}") == f"/{renamed}"
    assert not exists(engine, asked)


@pytest.mark.timeout(60)
def test_rewritten_method_and_request_reach_the_next_hook_and_the_daemon(
    engine, adapter, hooked_proxy, scratch
):
    name = scratch.name("rewrite")
    running_container(engine.host, name)
    pre_log, post_log = new_log(), new_log()
    pause = quote(f"/v1.41/containers/{name}/pause", safe="")
    proxy = hooked_proxy(adapters_file(
        {"DELETE /*/containers/*": {"pre": ["rewrite", "after"], "post": ["post"]}},
        {
            "rewrite": adapter.url(f"/rewrite?method=POST&request={pause}"),
            "after": adapter.url(f"/record/{pre_log}"),
            "post": adapter.url(f"/record/{post_log}"),
        },
    ))
    try:
        # The client asks to remove the container; the first hook turns that into a pause.
        answer = call(proxy.host, "DELETE", f"/v1.41/containers/{name}?force=1")
        assert answer.status == 204, answer
        assert inspect(engine.host, name, "{{.State.Status}}") == "paused"

        (seen,) = adapter.calls(pre_log)
        assert seen["ClientRequest"] == {
            "Method": "POST", "Request": f"/v1.41/containers/{name}/pause", "Body": None}
        # Post-hooks see the request as the pre-hooks left it, and the daemon's empty answer.
        (post,) = adapter.calls(post_log)
        assert post["Type"] == "post-hook"
        assert post["ClientRequest"]["Method"] == "POST"
        assert post["ClientRequest"]["Request"] == f"/v1.41/containers/{name}/pause"
        assert post["ServerResponse"] == {"ContentType": None, "Body": "", "Code": 204}
    finally:
        docker(engine.host, "unpause", name)


@pytest.mark.timeout(60)
def test_json_body_with_charset_and_chunked_reaches_pre_hook_as_text(
    engine, adapter, hooked_proxy, scratch
):
    log = new_log()
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {"pre": ["rec"]}},
        {"rec": adapter.url(f"/record/{log}")},
    ))
    first, second = scratch.name("charset"), scratch.name("chunked")
    body = create_body(Labels={"note": "café ✓"})
    conn = Conn(proxy.host)
    try:
        created = conn.request("POST", f"/v1.41/containers/create?name={first}", body,
                               {"Content-Type": "application/json; charset=utf-8"})
        assert created.status == 201, created
        # The same body sent chunked, in pieces that split a multi-byte character.
        cut = body.index("é".encode()) + 1
        created = conn.request("POST", f"/v1.41/containers/create?name={second}",
                               headers={"Content-Type": "application/json; charset=UTF-8"},
                               chunks=[body[:cut], body[cut:]])
        assert created.status == 201, created
    finally:
        conn.close()
    calls = adapter.calls(log)
    assert [c["ClientRequest"]["Body"] for c in calls] == [body.decode(), body.decode()]
    assert [c["ClientRequest"]["Request"] for c in calls] == [
        f"/v1.41/containers/create?name={first}", f"/v1.41/containers/create?name={second}"]
    for name in (first, second):
        assert inspect(engine.host, name, '{{index .Config.Labels "note"}}') == "café ✓"


@pytest.mark.timeout(240)
def test_non_json_bodies_reach_hooks_as_null_and_the_daemon_intact(
    engine, adapter, hooked_proxy, scratch, tmp_path
):
    log = new_log()
    proxy = hooked_proxy(adapters_file(
        {"* *": {"pre": ["rec"]}}, {"rec": adapter.url(f"/record/{log}")},
    ))

    # docker cp: a tar archive PUT to the container, larger than the default max_body (4 MiB),
    # which does not apply to bodies hooks are not shown.
    name = scratch.name("cp")
    running_container(engine.host, name)
    data = os.urandom(5 * 1024 * 1024 + 7)
    (tmp_path / "blob.bin").write_bytes(data)
    ok(docker(proxy.host, "cp", str(tmp_path / "blob.bin"), f"{name}:/tmp/blob.bin"))
    assert ok(docker(engine.host, "exec", name, "md5sum", "/tmp/blob.bin")).split()[0] == \
        md5(data).encode()

    # docker build: a tar build context.
    context = tmp_path / "ctx"
    context.mkdir()
    blob = os.urandom(3 * 1024 * 1024)
    (context / "blob").write_bytes(blob)
    (context / "Dockerfile").write_bytes(b"FROM busybox\nCOPY blob /blob\n"
                                         b"RUN md5sum /blob > /blob.md5\n")
    image = scratch.name("built")
    ok(docker(proxy.host, "build", "-t", image, str(context),
              env_extra={"DOCKER_BUILDKIT": "0"}, timeout=180))
    assert ok(docker(engine.host, "run", "--rm", image, "cat", "/blob.md5")) == \
        f"{md5(blob)}  /blob\n".encode()

    # docker load: an image archive.
    tagged = f"{scratch.name('loaded')}:v1"
    ok(docker(engine.host, "tag", "busybox:latest", tagged))
    archive = tmp_path / "image.tar"
    ok(docker(engine.host, "save", "-o", str(archive), tagged))
    ok(docker(engine.host, "rmi", tagged))
    assert ok(docker(proxy.host, "load", "-i", str(archive))).strip() == \
        f"Loaded image: {tagged}".encode()
    assert inspect(engine.host, tagged, "{{.Id}}") == inspect(engine.host, "busybox", "{{.Id}}")

    calls = {f"{c['ClientRequest']['Method']} {c['ClientRequest']['Request'].split('?')[0]}": c
             for c in adapter.calls(log)}
    uploads = [
        next(c for key, c in calls.items()
             if key.startswith("PUT ") and key.endswith(f"/containers/{name}/archive")),
        next(c for key, c in calls.items() if key.startswith("POST ") and key.endswith("/build")),
        next(c for key, c in calls.items()
             if key.startswith("POST ") and key.endswith("/images/load")),
    ]
    assert [c["ClientRequest"]["Body"] for c in uploads] == [None, None, None]


@pytest.mark.timeout(60)
def test_json_body_over_max_body_is_refused_with_413(engine, adapter, hooked_proxy, scratch):
    log = new_log()
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {"pre": ["rec"]}},
        {"rec": adapter.url(f"/record/{log}")},
        max_body="1KiB",
    ))
    big = "x" * 2000

    by_cli = scratch.name("big-cli")
    result = docker(proxy.host, "create", "--name", by_cli, "-e", f"BIG={big}", "busybox")
    assert result.returncode != 0
    assert b"1024" in result.stderr, result.stderr

    with_length, chunked = scratch.name("big-length"), scratch.name("big-chunked")
    body = create_body(Env=[f"BIG={big}"])
    answer = call(proxy.host, "POST", f"/v1.41/containers/create?name={with_length}", body, JSON)
    assert answer.status == 413, answer
    assert "1024" in answer.message()
    conn = Conn(proxy.host)
    try:
        answer = conn.request("POST", f"/v1.41/containers/create?name={chunked}",
                              headers=JSON, chunks=[body[:600], body[600:]])
    finally:
        conn.close()
    assert answer.status == 413, answer
    assert "1024" in answer.message()

    for name in (by_cli, with_length, chunked):
        assert not exists(engine, name)
    # Refused before any adapter was called.
    assert adapter.calls(log) == []

    # Under the limit, the same endpoint works.
    small = scratch.name("small")
    answer = call(proxy.host, "POST", f"/v1.41/containers/create?name={small}",
                  create_body(Env=["SMALL=1"]), JSON)
    assert answer.status == 201, answer
    assert exists(engine, small)


# -- post-hooks -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_post_hook_rewrites_docker_inspect(engine, adapter, hooked_proxy, scratch):
    name = scratch.name("inspected")
    ok(docker(engine.host, "create", "--name", name, "--label", "own=1", "busybox"))
    proxy = hooked_proxy(adapters_file(
        {"GET /*/containers/*/json": {"post": ["rewrite"]}},
        {"rewrite": adapter.url(
            "/inspect-rewrite?label=rewritten.by&value=post-hook&name=/shown-by-hook")},
    ))
    template = '{{index .Config.Labels "rewritten.by"}}|{{index .Config.Labels "own"}}|{{.Name}}'
    assert inspect(engine.host, name, template) == f"|1|/{name}"
    assert inspect(proxy.host, name, template) == "post-hook|1|/shown-by-hook"
    (document,) = json.loads(ok(docker(proxy.host, "inspect", name)))
    assert document["Config"]["Labels"] == {"own": "1", "rewritten.by": "post-hook"}


@pytest.mark.timeout(60)
def test_post_hook_changes_code_content_type_and_body_with_correct_framing(
    engine, adapter, hooked_proxy
):
    new_body = "réécrit ✓ by a post-hook"
    proxy = hooked_proxy(adapters_file(
        {
            "GET /*/version": {"post": ["code"]},
            "GET /*/_ping": {"post": ["ctype"]},
            "GET /*/info": {"post": ["body"]},
        },
        {
            "code": adapter.url("/code?code=299"),
            "ctype": adapter.url("/content-type?value=application/x-powerstrip-test"),
            "body": adapter.url(
                f"/respond?code=202&content_type=text/plain&body={quote(new_body)}"),
        },
    ))
    direct = call(engine.host, "GET", "/v1.41/version")
    assert direct.status == 200

    conn = Conn(proxy.host)
    try:
        version = conn.request("GET", "/v1.41/version")
        assert re.fullmatch(r"HTTP/1\.1 299 .*", version.status_line), version.status_line
        assert version.header("content-length") == str(len(version.body))
        assert version.header("transfer-encoding") is None
        # The body went through the hook and back unchanged; the daemon's own headers stay.
        assert version.body == direct.body
        assert version.header("content-type") == direct.header("content-type")
        assert version.header("api-version") == direct.header("api-version")

        ping = conn.request("GET", "/_ping")
        assert ping.status == 200
        assert ping.header("content-type") == "application/x-powerstrip-test"
        assert [k.lower() for k, _ in ping.headers].count("content-type") == 1
        assert ping.body == b"OK" and ping.header("content-length") == "2"

        info = conn.request("GET", "/v1.41/info")
        assert info.status == 202
        assert info.header("content-type") == "text/plain"
        assert info.body == new_body.encode()
        assert info.header("content-length") == str(len(new_body.encode()))

        # Framing held: the same connection carries on, unhooked requests included.
        images = conn.request("GET", "/v1.41/images/json")
        assert images.status == 200 and isinstance(images.json(), list)
        assert conn.request("GET", "/v1.41/version").status == 299
    finally:
        conn.close()


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_refusals_reach_the_client_with_the_adapters_status_and_words(
    engine, adapter, hooked_proxy, scratch
):
    proxy = hooked_proxy(adapters_file(
        {
            "POST /*/containers/create": {"pre": ["policy"]},
            "GET /*/containers/*/json": {"pre": ["legal"]},
            "DELETE /*/containers/*": {"pre": ["silent"]},
            "GET /*/version": {"post": ["late"]},
        },
        {
            "policy": adapter.url(
                "/refuse?status=403&message=privileged%20containers%20are%20not%20allowed"),
            "legal": adapter.url("/refuse-text?status=451&message=not%20in%20this%20country"),
            "silent": adapter.url("/refuse-empty?status=403"),
            "late": adapter.url("/refuse?status=409&message=too%20late"),
        },
    ))

    # The CLI prints the message and fails; the daemon never heard of the container.
    name = scratch.name("refused")
    result = docker(proxy.host, "run", "--rm", "--name", name, "busybox", "true")
    assert result.returncode != 0
    assert b"privileged containers are not allowed" in result.stderr, result.stderr
    assert b"policy" in result.stderr, result.stderr
    assert not exists(engine, name)

    raw = scratch.name("refused-raw")
    answer = call(proxy.host, "POST", f"/v1.41/containers/create?name={raw}", create_body(), JSON)
    assert answer.status == 403, answer
    assert "json" in answer.header("content-type")
    assert "policy" in answer.message()
    assert "privileged containers are not allowed" in answer.message()
    assert not exists(engine, raw)

    victim = scratch.name("victim")
    ok(docker(engine.host, "create", "--name", victim, "busybox"))
    answer = call(proxy.host, "GET", f"/v1.41/containers/{victim}/json")
    assert answer.status == 451, answer
    assert "legal" in answer.message() and "not in this country" in answer.message()

    answer = call(proxy.host, "DELETE", f"/v1.41/containers/{victim}?force=1")
    assert answer.status == 403, answer
    assert "silent" in answer.message()
    assert exists(engine, victim)

    # A post-hook refusal replaces the daemon's answer.
    answer = call(proxy.host, "GET", "/v1.41/version")
    assert answer.status == 409, answer
    assert "late" in answer.message() and "too late" in answer.message()


# -- adapter failures -------------------------------------------------------------------------


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: name, adapter (a behaviour path on the test adapter, or a full URL), timeout, the status the
#: client must get, and a pattern the message must match to say what went wrong.
FAILURES = [
    ("down", "http://127.0.0.1:{closed}/x", 3, 502, r"(?i)refused|unreachable|connect"),
    ("nosocket", "unix:///nonexistent-{closed}/adapter.sock:/x", 3, 502,
     r"(?i)no such file|unreachable|connect"),
    ("slow", "/slow?seconds=6", 1, 504, r"(?i)time"),
    ("garbage", "/garbage", 3, 502, r"(?i)json"),
    ("wrong", "/wrong-object", 3, 502, r"Modified(Client|Server)(Request|Response)"),
    ("hangup", "/hang-up", 3, 502, r"(?i)unreachable|closed|lost|connection"),
]


def failure_url(adapter: HookAdapter, spec: str) -> str:
    spec = spec.replace("{closed}", str(closed_port()))
    return adapter.url(spec) if spec.startswith("/") else spec


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pre", "post"])
@pytest.mark.parametrize(("name", "spec", "timeout", "status", "cause"), FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_failing_adapter_gives_status_naming_adapter_within_timeout(
    engine, adapter, hooked_proxy, scratch, kind, name, spec, timeout, status, cause
):
    adapter_name = f"failing-{name}"
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {kind: [adapter_name]}},
        {adapter_name: {"url": failure_url(adapter, spec), "timeout": timeout}},
    ))
    container = scratch.name(f"fail-{name}")
    started = time.monotonic()
    answer = call(proxy.host, "POST", f"/v1.41/containers/create?name={container}",
                  create_body(), JSON)
    elapsed = time.monotonic() - started
    assert answer.status == status, answer
    message = answer.message()
    assert adapter_name in message and re.search(cause, message), message
    # The answer comes from the proxy's timeout, not the adapter's: the slow adapter would answer
    # only after 6 s. The bound leaves room for the daemon's own create (before a post-hook),
    # which takes over a second on a loaded machine.
    bound = 5 if name == "slow" else timeout + 3
    assert elapsed < bound, f"answered after {elapsed:.2f} s: {message}"
    if kind == "pre":
        assert not exists(engine, container)

    # The CLI shows it too.
    result = docker(proxy.host, "create", "--name", scratch.name("fail-cli"), "busybox")
    assert result.returncode != 0 and adapter_name.encode() in result.stderr, result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "spec", "timeout", "status", "cause"), FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_on_error_skip_lets_the_request_through(
    engine, adapter, hooked_proxy, scratch, name, spec, timeout, status, cause
):
    skipping = f"skip-{name}"
    proxy = hooked_proxy(adapters_file(
        {
            "POST /*/containers/create": {"pre": [skipping, "env"]},
            "GET /*/containers/*/json": {"post": [skipping, "rewrite"]},
        },
        {skipping: {"url": failure_url(adapter, spec), "timeout": timeout, "on_error": "skip"},
         "env": adapter.url("/add-env?name=AFTER_SKIP&value=1"),
         "rewrite": adapter.url("/inspect-rewrite?label=after.skip&value=1")},
    ))
    # The next adapter in the chain still runs, and the daemon gets the request.
    out = ok(docker(proxy.host, "run", "--rm", "busybox", "env"))
    assert b"AFTER_SKIP=1\n" in out
    container = scratch.name("skipped")
    ok(docker(engine.host, "create", "--name", container, "busybox"))
    started = time.monotonic()
    answer = call(proxy.host, "GET", f"/v1.41/containers/{container}/json")
    elapsed = time.monotonic() - started
    assert answer.status == 200, answer
    assert answer.json()["Config"]["Labels"]["after.skip"] == "1"
    assert elapsed <= timeout + 1, f"answered after {elapsed:.2f} s"
    assert inspect(proxy.host, container, '{{index .Config.Labels "after.skip"}}') == "1"


@pytest.mark.timeout(60)
def test_unix_socket_adapter_urls(engine, adapter, hooked_proxy):
    encoded = quote(adapter.socket_path, safe="")
    proxy = hooked_proxy(adapters_file(
        {"POST /*/containers/create": {"pre": ["plugin", "requests_style"]}},
        {
            "plugin": adapter.unix_url("/add-env?name=VIA_UNIX&value=1"),
            "requests_style": f"http+unix://{encoded}/add-env?name=VIA_HTTP_UNIX&value=2",
        },
    ))
    out = ok(docker(proxy.host, "run", "--rm", "busybox", "env"))
    assert b"VIA_UNIX=1\n" in out and b"VIA_HTTP_UNIX=2\n" in out, out


# -- hot reload -------------------------------------------------------------------------------


def status_becomes(conn: Conn, target: str, status: int, timeout: float) -> bool:
    """Whether requests on ``conn`` get ``status`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if conn.request("GET", target).status == status:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_hot_reload_on_a_kept_alive_connection(adapter, hooked_proxy):
    hooked = adapters_file({"GET /*/version": {"post": ["code"]}},
                           {"code": adapter.url("/code?code=299")})
    unhooked = adapters_file({}, {"code": adapter.url("/code?code=299")})
    proxy = hooked_proxy(unhooked)
    path = proxy.config_path
    conn = Conn(proxy.host)
    try:
        assert conn.request("GET", "/v1.41/version").status == 200

        write_atomically(path, hooked)
        assert status_becomes(conn, "/v1.41/version", 299, 3), proxy.stderr()
        write_atomically(path, unhooked)
        assert status_becomes(conn, "/v1.41/version", 200, 3), proxy.stderr()

        # An invalid file changes nothing but the log, which names the file and line.
        write_atomically(path, hooked)
        assert status_becomes(conn, "/v1.41/version", 299, 3), proxy.stderr()
        invalid = unhooked.replace("endpoints: {}", 'endpoints:\n  "GET /*/version":\n'
                                                    "    postt: [code]")
        assert "postt" in invalid
        write_atomically(path, invalid)
        line = invalid.splitlines().index("    postt: [code]") + 1
        assert wait_for(lambda: f"{path}:{line}:" in proxy.stderr(), 3), proxy.stderr()
        time.sleep(1.5)
        assert conn.request("GET", "/v1.41/version").status == 299
        assert proxy.proc.poll() is None

        # SIGHUP reloads too (and does not end the proxy, as it would by default).
        write_atomically(path, unhooked)
        proxy.proc.send_signal(signal.SIGHUP)
        assert status_becomes(conn, "/v1.41/version", 200, 3), proxy.stderr()
        assert wait_for(lambda: "SIGHUP" in proxy.stderr(), 3), proxy.stderr()
        assert proxy.proc.poll() is None
        assert conn.request("GET", "/v1.41/version").status == 200
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_requests_in_flight_finish_with_the_config_they_began_with(
    engine, adapter, hooked_proxy, scratch
):
    name = scratch.name("in-flight")
    ok(docker(engine.host, "create", "--name", name, "busybox"))
    config = {"slow": {"url": adapter.url("/slow?seconds=3"), "timeout": 10},
              "code": adapter.url("/code?code=299")}
    proxy = hooked_proxy(adapters_file(
        {"GET /*/containers/*/json": {"pre": ["slow"], "post": ["code"]},
         "GET /*/version": {"post": ["code"]}},
        config,
    ))
    target = f"/v1.41/containers/{name}/json"
    first: list[Response] = []
    finished: list[float] = []

    def slow_request() -> None:
        first.append(call(proxy.host, "GET", target))
        finished.append(time.monotonic())

    worker = threading.Thread(target=slow_request)
    worker.start()
    try:
        time.sleep(0.3)
        write_atomically(proxy.config_path, adapters_file({}, config))
        # /version shows when the new file is in force: its post-hook is gone.
        assert wait_for(lambda: call(proxy.host, "GET", "/v1.41/version").status == 200, 2.5)
        reloaded = time.monotonic()
        assert call(proxy.host, "GET", target).status == 200
    finally:
        worker.join(15)
    assert first and first[0].status == 299, first
    # It was still in flight when the new file took over, and kept the hooks it began with.
    assert finished[0] > reloaded


# -- checking files ---------------------------------------------------------------------------


def powerstrip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POWERSTRIP_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "powerstrip", *args], capture_output=True,
                          text=True, timeout=30, env=env, cwd=cwd)


INVALID = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: flocker
    post: [weeve]
    pre: [flocker]
adapters:
  flocker: http://flocker/flocker-adapter
  weave: {url: "http://weave/extension", timout: 5}
"""


@pytest.mark.timeout(60)
def test_check_command(adapter, tmp_path):
    valid = tmp_path / "valid.yml"
    valid.write_text(adapters_file(
        {"POST /*/containers/create": {"pre": ["a"], "post": ["a"]}},
        {"a": adapter.url("/null")},
    ))
    result = powerstrip("check", "--config", str(valid), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    invalid = tmp_path / "adapters.yml"
    invalid.write_text(INVALID)
    result = powerstrip("check", "--config", str(invalid), cwd=tmp_path)
    assert result.returncode != 0
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert [re.match(rf"{re.escape(str(invalid))}:(\d+): ", p) is not None
            for p in problems] == [True] * len(problems), problems
    lines = [int(p[len(str(invalid)) + 1:].split(":")[0]) for p in problems]
    assert lines == [4, 5, 6, 9], problems
    assert "weeve" in problems[1] and "timout" in problems[3]

    # serve refuses to start on it, rather than running without the hooks it was meant to have.
    served = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", "tcp://127.0.0.1:0",
         "--upstream", "unix:///nonexistent.sock", "--config", str(invalid)],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert served.returncode != 0
    assert "export DOCKER_HOST" not in served.stdout
    assert f"{invalid}:4:" in served.stderr, served.stderr


# -- streams ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_streams_pass_through_a_catch_all_hook(engine, adapter, hooked_proxy, scratch):
    pre_log, post_log = new_log(), new_log()
    proxy = hooked_proxy(adapters_file(
        {"* *": {"pre": ["pre"], "post": ["post"]}},
        {"pre": adapter.url(f"/record/{pre_log}"), "post": adapter.url(f"/record/{post_log}")},
    ))

    # logs -f: the first line arrives promptly, while the stream stays open.
    followed = scratch.name("follow")
    running_container(engine.host, followed, "echo first-line; sleep 120")
    follow = popen_docker(proxy.host, "logs", "-f", followed)
    try:
        assert LineReader(follow).readline(timeout=2.0) == b"first-line\n"
        assert follow.poll() is None
    finally:
        end(follow)

    # events: live.
    watched = scratch.name("events")
    since = str(int(time.time()) - 1)
    events = popen_docker(proxy.host, "events", "--since", since, "--filter", "type=container",
                          "--filter", f"container={watched}",
                          "--format", "{{.Action}} {{.Actor.Attributes.name}}")
    try:
        reader = LineReader(events)
        ok(docker(engine.host, "create", "--name", watched, "busybox"))
        assert reader.wait_for_line(f"create {watched}".encode(), 5.0)
        ok(docker(engine.host, "rm", watched))
        assert reader.wait_for_line(f"destroy {watched}".encode(), 5.0)
    finally:
        end(events)

    # stats: streaming samples keep coming.
    stats = popen_docker(proxy.host, "stats", "--format", "{{.Name}}", followed)
    try:
        reader = LineReader(stats)
        assert reader.wait_for_line(followed.encode(), 10.0)
        assert reader.wait_for_line(followed.encode(), 10.0)
    finally:
        end(stats)

    # run (create, wait, attach, start), stdin through an attach, exec.
    assert ok(docker(proxy.host, "run", "--rm", "busybox", "echo", "ran")) == b"ran\n"
    assert ok(docker(proxy.host, "run", "-i", "--rm", "busybox", "cat", input=b"hi\n")) == \
        b"hi\n"
    assert ok(docker(proxy.host, "exec", followed, "echo", "exec-out")) == b"exec-out\n"
    assert ok(docker(proxy.host, "exec", "-i", followed, "cat", input=b"exec-in\n")) == \
        b"exec-in\n"

    pre = request_paths(adapter.calls(pre_log))
    post = request_paths(adapter.calls(post_log))
    streamed = {
        "logs": r"GET /v[\d.]+/containers/[^/]+/logs\?.*follow=1",
        "events": r"GET /v[\d.]+/events\?",
        "stats": r"GET /v[\d.]+/containers/[^/]+/stats(\?|$)",
        "wait": r"POST /v[\d.]+/containers/[0-9a-f]{64}/wait",
        "attach": r"POST /v[\d.]+/containers/[0-9a-f]{64}/attach\?",
        "exec start": r"POST /v[\d.]+/exec/[0-9a-f]{64}/start",
    }
    for what, pattern in streamed.items():
        assert any(re.match(pattern, p) for p in pre), f"no pre-hook call for {what}: {pre}"
        assert not any(re.match(pattern, p) for p in post), f"post-hook called for {what}"
    # Post-hooks did run for the answers that are not streams.
    assert any(re.match(r"POST /v[\d.]+/containers/create", p) for p in post), post
    assert any(re.match(r"POST /v[\d.]+/containers/[^/]+/exec$", p) for p in post), post


# -- the adapter itself -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_null_adapter_echoes_both_hook_types():
    null = start_null_adapter()
    try:
        pre = {"PowerstripProtocolVersion": 1, "Type": "pre-hook",
               "ClientRequest": {"Method": "POST", "Request": "/v1.41/containers/create?name=x",
                                 "Body": '{"Image": "busybox"}'}}
        post = {**pre, "Type": "post-hook",
                "ServerResponse": {"ContentType": None, "Body": "", "Code": 204}}
        host = "tcp://" + null.url[len("http://"):].rstrip("/")
        conn = Conn(host)
        try:
            # Both on one connection: it keeps connections alive, as Powerstrip's pool expects.
            answer = conn.request("POST", "/", json.dumps(pre).encode(), JSON)
            assert answer.json() == {"PowerstripProtocolVersion": 1,
                                     "ModifiedClientRequest": pre["ClientRequest"]}
            answer = conn.request("POST", "/", json.dumps(post).encode(), JSON)
            assert answer.json() == {"PowerstripProtocolVersion": 1,
                                     "ModifiedServerResponse": post["ServerResponse"]}
            assert conn.request("POST", "/", b"not json", JSON).status == 400
        finally:
            conn.close()
    finally:
        null.stop()


@pytest.mark.timeout(60)
def test_a_stream_spelled_oddly_is_still_a_stream(engine, adapter, hooked_proxy, scratch):
    """/even%74s routes to /events: post-hooks must not hold it back waiting for its end."""
    post_log = new_log()
    proxy = hooked_proxy(adapters_file(
        {"* *": {"post": ["post"]}}, {"post": adapter.url(f"/record/{post_log}")},
    ))
    watched = scratch.name("spelled")
    conn = Conn(proxy.host)
    try:
        conn.send("GET", f"/v1.41/even%74s?filters=%7B%22container%22%3A%5B%22{watched}%22%5D%7D")
        response = conn.read(head_only=True)
        assert response.status == 200
        ok(docker(engine.host, "create", "--name", watched, "busybox"))
        deadline = time.monotonic() + 5
        while b'"create"' not in conn.buffer and time.monotonic() < deadline:
            conn._more()
        assert b'"create"' in conn.buffer, "the event did not stream through"
    finally:
        conn.close()


# -- adapter connections: pooled keep-alive, https ---------------------------------------------


class CountingServer(ThreadingHTTPServer):
    """A null adapter that counts the connections it accepts and the calls it answers."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.connections = 0
        self.calls = 0
        self.lock = threading.Lock()
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    server: CountingServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = "ClientRequest" if call["Type"] == "pre-hook" else "ServerResponse"
        answer = json.dumps({"PowerstripProtocolVersion": 1,
                             f"Modified{key}": call[key]}).encode()
        with self.server.lock:
            self.server.calls += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(server: CountingServer) -> Iterator[CountingServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def counting() -> Iterator[CountingServer]:
    yield from serve(CountingServer())


@pytest.mark.timeout(90)
def test_adapter_calls_reuse_a_pooled_keep_alive_connection(hooked_proxy, counting):
    port = counting.server_address[1]
    proxy = hooked_proxy(adapters_file(
        {"GET /*/containers/json": {"pre": ["count"]}},
        {"count": f"http://127.0.0.1:{port}/"},
    ))
    kept = Conn(proxy.host)
    try:
        for _ in range(10):
            assert kept.request("GET", "/v1.41/containers/json").status == 200
    finally:
        kept.close()
    for _ in range(5):  # new client connections share the same pool
        fresh = Conn(proxy.host)
        try:
            assert fresh.request("GET", "/containers/json").status == 200
        finally:
            fresh.close()
    assert counting.calls == 15
    assert counting.connections == 1


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_counting(certificate: tuple[Path, Path]) -> Iterator[CountingServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    yield from serve(CountingServer(context))


@pytest.mark.timeout(90)
def test_https_adapter_with_a_trusted_certificate(
    hooked_proxy, tls_counting, certificate, monkeypatch
):
    # OpenSSL's default verify paths honour SSL_CERT_FILE: the proxy trusts this one CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    port = tls_counting.server_address[1]
    proxy = hooked_proxy(adapters_file(
        {"GET /*/containers/json": {"pre": ["secure"]}},
        {"secure": f"https://localhost:{port}/hook"},
    ))
    assert Conn(proxy.host).request("GET", "/v1.41/containers/json").status == 200
    assert tls_counting.calls == 1


@pytest.mark.timeout(90)
def test_https_adapter_with_an_untrusted_certificate_is_a_502(hooked_proxy, tls_counting):
    port = tls_counting.server_address[1]
    proxy = hooked_proxy(adapters_file(
        {"GET /*/containers/json": {"pre": ["secure"]}},
        {"secure": f"https://localhost:{port}/hook"},
    ))
    response = Conn(proxy.host).request("GET", "/v1.41/containers/json")
    assert response.status == 502
    message = json.loads(response.body)["message"]
    assert "adapter secure" in message and "certificate" in message.lower()
    assert tls_counting.calls == 0


# -- HTTP/1.0 clients -------------------------------------------------------------------------


def http10(host: str, target: str) -> tuple[bytes, bytes]:
    """``GET target HTTP/1.0`` on a fresh connection: the head and the body, read to the close
    (the daemon ends a long HTTP/1.0 answer by closing, with no length)."""
    with connect(host) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = Conn(sock=sock).read_to_close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.timeout(60)
def test_post_hooks_see_a_response_that_ends_with_the_connection(engine, adapter, hooked_proxy):
    """An HTTP/1.0 client gets a long answer delimited by the connection's close; post-hooks
    still see it whole, and the client gets it (unchanged, or as the hook changed it)."""
    log = new_log()
    proxy = hooked_proxy(adapters_file(
        {"GET /*/info": {"post": ["echo"]},
         "GET /*/version": {"post": ["body"]}},
        {"echo": adapter.url(f"/record/{log}"),
         "body": adapter.url("/respond?body=" + quote('{"rewritten": true}'))},
    ))
    head, body = http10(proxy.host, "/v1.41/info")
    assert head.startswith(b"HTTP/1.0 200"), head
    # Long enough that the daemon sent it without a length: the case this test is about.
    assert b"content-length" not in head.lower(), head
    assert json.loads(body)["ServerVersion"]
    [seen] = adapter.calls(log)
    assert json.loads(seen["ServerResponse"]["Body"]) == json.loads(body)

    head, body = http10(proxy.host, "/v1.41/version")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body) == {"rewritten": True}
