"""The adapter SDK: hook routing, chaining, answers and errors, through ``Adapter.handle``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.internet import defer

from powerstrip.adapter import Adapter, Refuse, Request, Response
from powerstrip.hooks.wire import (
    ClientRequest,
    ServerResponse,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
)

ROOT = Path(__file__).resolve().parents[2]
CREATE = ClientRequest("POST", "/v1.41/containers/create?name=web", '{"Image": "busybox"}')


def fired(d: defer.Deferred) -> object:
    """The result of a Deferred that must already have fired."""
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def call(app: Adapter, payload: bytes) -> tuple[int, bytes]:
    result = fired(app.handle(payload))
    assert isinstance(result, tuple)
    return result


def pre(app: Adapter, request: ClientRequest = CREATE) -> ClientRequest:
    status, body = call(app, pre_hook_call(request))
    assert status == 200, body
    return parse_pre_hook_answer(body, request)


def test_pre_hook_changes_json_body():
    app = Adapter("t")

    @app.pre("POST /*/containers/create")
    def add_env(req):
        data = req.json
        data["Env"] = ["A=1"]
        return req.with_json(data)

    status, body = call(app, pre_hook_call(CREATE))
    assert status == 200
    assert json.loads(body)["PowerstripProtocolVersion"] == 1
    answer = parse_pre_hook_answer(body, CREATE)
    assert json.loads(answer.body) == {"Image": "busybox", "Env": ["A=1"]}
    assert (answer.method, answer.request) == (CREATE.method, CREATE.request)


def test_request_view():
    req = Request("POST", "/v1.41/containers/create?name=web&x=1&x=2", "not json")
    assert req.path == "/v1.41/containers/create"
    assert req.query == {"name": ["web"], "x": ["1", "2"]}
    assert req.json is None
    assert Request("GET", "/_ping").json is None
    moved = req.replace(path="/v1.41/containers/other")
    assert moved.target == "/v1.41/containers/other?name=web&x=1&x=2"
    assert moved.body == "not json"


def test_unmatched_call_is_echoed():
    app = Adapter("t")
    app.pre("GET /*/containers/json")(lambda req: pytest.fail("must not run"))
    assert pre(app) == CREATE
    response = ServerResponse("application/json", '{"Id": "x"}', 201)
    status, body = call(app, post_hook_call(CREATE, response))
    assert status == 200
    assert parse_post_hook_answer(body, response) == response


def test_none_means_unchanged():
    app = Adapter("t")
    app.pre("POST /*/containers/create")(lambda req: None)
    assert pre(app) == CREATE


def test_hooks_chain_in_registration_order():
    app = Adapter("t")
    seen: list[str] = []

    @app.pre("POST /*/containers/*")
    def first(req):
        seen.append("first")
        return req.with_json({**req.json, "Env": ["A=1"]})

    @app.pre("* /v1.41/containers/create")
    def second(req):
        seen.append("second")
        assert req.json["Env"] == ["A=1"]
        return req.with_json({**req.json, "Env": req.json["Env"] + ["B=2"]})

    answer = pre(app)
    assert seen == ["first", "second"]
    assert json.loads(answer.body)["Env"] == ["A=1", "B=2"]


def test_method_and_target_replacement():
    app = Adapter("t")

    @app.pre("POST /*/containers/create")
    def reroute(req):
        return req.replace(method="PUT", target="/v1.41/containers/other?x=1")

    answer = pre(app)
    assert (answer.method, answer.request, answer.body) == (
        "PUT", "/v1.41/containers/other?x=1", CREATE.body
    )


def test_refuse_answers_status_and_message():
    app = Adapter("policy")

    @app.pre("POST /*/containers/create")
    def no_privileged(req):
        raise Refuse(403, "privileged containers are not allowed")

    status, body = call(app, pre_hook_call(CREATE))
    assert status == 403
    assert json.loads(body) == {"message": "privileged containers are not allowed"}
    with pytest.raises(ValueError):
        Refuse(200, "fine")


def test_post_hook_changes_code_type_and_body():
    app = Adapter("t")
    sent = ServerResponse("application/json", '{"Config": {"Labels": {}}}', 200)

    @app.post("GET /*/containers/*/json")
    def label(req, resp):
        assert isinstance(resp, Response) and req.method == "GET"
        data = resp.json
        data["Config"]["Labels"]["seen"] = "yes"
        return resp.with_json(data)

    @app.post("GET /*/containers/*/json")
    def to_text(req, resp):
        assert resp.json["Config"]["Labels"] == {"seen": "yes"}
        return resp.replace(code=299, content_type="text/plain", body=resp.body + "\n")

    request = ClientRequest("GET", "/v1.41/containers/web/json", None)
    status, body = call(app, post_hook_call(request, sent))
    assert status == 200
    answer = parse_post_hook_answer(body, sent)
    assert answer.code == 299
    assert answer.content_type == "text/plain"
    assert json.loads(answer.body) == {"Config": {"Labels": {"seen": "yes"}}}


@pytest.mark.parametrize("payload, words", [
    (b"not json", "not JSON"),
    (b"[1]", "not an object"),
    (json.dumps({"Type": "mid-hook", "ClientRequest": {}}).encode(), "Type"),
    (json.dumps({"Type": "pre-hook"}).encode(), "ClientRequest"),
    (json.dumps({"Type": "pre-hook", "ClientRequest": {"Method": "GET", "Body": None}}).encode(),
     "Request"),
    (json.dumps({"Type": "post-hook", "ClientRequest": CREATE.to_wire()}).encode(),
     "ServerResponse"),
    (json.dumps({"PowerstripProtocolVersion": 3, "Type": "pre-hook",
                 "ClientRequest": CREATE.to_wire()}).encode(), "Version"),
])
def test_malformed_call_is_400(payload, words):
    status, body = call(Adapter("t"), payload)
    assert status == 400
    message = json.loads(body)["message"]
    assert "not a hook call" in message and words in message


def test_exception_is_500_naming_the_hook():
    app = Adapter("t")

    @app.pre("POST /*/containers/create")
    def broken_hook(req):
        raise KeyError("HostConfig")

    status, body = call(app, pre_hook_call(CREATE))
    assert status == 500
    message = json.loads(body)["message"]
    assert "broken_hook" in message and "KeyError" in message


def test_wrong_return_type_is_500_naming_the_hook():
    app = Adapter("t")
    app.pre("POST /*/containers/create")(lambda req: {"Method": "GET"})
    status, body = call(app, pre_hook_call(CREATE))
    assert status == 500
    assert "<lambda>" in json.loads(body)["message"]


def test_deferred_returning_hook():
    app = Adapter("t")
    later: defer.Deferred = defer.Deferred()
    app.pre("POST /*/containers/create")(lambda req: later)

    d = app.handle(pre_hook_call(CREATE))
    results: list[object] = []
    d.addCallback(results.append)
    assert not results
    later.callback(Request("POST", "/v1.41/containers/created", None))
    status, body = results[0]
    assert status == 200
    assert parse_pre_hook_answer(body, CREATE).request == "/v1.41/containers/created"


def test_async_def_hook():
    app = Adapter("t")
    later: defer.Deferred = defer.Deferred()

    @app.post("POST /*/containers/create")
    async def slow(req, resp):
        code = await later
        return resp.replace(code=code)

    sent = ServerResponse("application/json", "{}", 201)
    d = app.handle(post_hook_call(CREATE, sent))
    later.callback(202)
    status, body = fired(d)
    assert status == 200
    assert parse_post_hook_answer(body, sent).code == 202


def test_async_refusal():
    app = Adapter("t")

    @app.pre("POST /*/containers/create")
    async def refuse(req):
        raise Refuse(409, "busy")

    assert call(app, pre_hook_call(CREATE)) == (409, b'{"message": "busy"}')


@pytest.mark.parametrize("target", [
    "/containers/create",
    "/v1.41/%63ontainers/create",
    "/v1.41/containers/create?name=web",
])
def test_spellings_reach_the_hook(target):
    app = Adapter("t")
    app.pre("POST /*/containers/create")(lambda req: req.with_json({"hooked": True}))
    request = ClientRequest("POST", target, "{}")
    answer = pre(app, request)
    assert json.loads(answer.body) == {"hooked": True}
    assert answer.request == target


def test_bad_pattern_is_refused_at_registration():
    app = Adapter("t")
    for pattern in ("/containers/create", "post /containers/create", "POST containers"):
        with pytest.raises(ValueError):
            app.pre(pattern)


@pytest.mark.parametrize(
    ("pattern", "phrase"),
    [
        ("post /x", "methods are written in capitals: 'POST'"),
        ("POST  /x", "exactly one space"),
        ("POST\t/x", "exactly one space"),
        (" POST /x", "exactly one space"),
        ("POST /x ", "exactly one space"),
        ("POST x", "must start with '/'"),
        ("POST *x", "must start with '/'"),
        ("PO-ST /x", "must be * or an HTTP method"),
    ],
)
def test_patterns_the_adapters_file_refuses_are_refused(pattern, phrase):
    """The SDK reads hook patterns with the adapters file's rules and says what is wrong."""
    for register in (Adapter("t").pre, Adapter("t").post):
        with pytest.raises(ValueError, match=re.escape(phrase)) as refused:
            register(pattern)
        assert repr(pattern) in str(refused.value)


ADAPTER_SCRIPT = textwrap.dedent("""
    from powerstrip.adapter import Adapter, Refuse
    app = Adapter("policy")

    @app.pre("POST /*/containers/create")
    def no_privileged(req):
        if (req.json or {}).get("HostConfig", {}).get("Privileged"):
            raise Refuse(403, "privileged containers are not allowed")
        return req.with_json({**req.json, "Env": ["A=1"]})

    app.run()
""")


@pytest.mark.timeout(30)
def test_served_over_tcp(tmp_path):
    script = tmp_path / "adapter.py"
    script.write_text(ADAPTER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1] + "hook"

        def post(payload: bytes) -> tuple[int, bytes]:
            req = urllib.request.Request(url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        status, body = post(pre_hook_call(CREATE))
        assert status == 200
        assert json.loads(parse_pre_hook_answer(body, CREATE).body)["Env"] == ["A=1"]

        privileged = ClientRequest("POST", "/containers/create",
                                   '{"HostConfig": {"Privileged": true}}')
        status, body = post(pre_hook_call(privileged))
        assert status == 403
        assert json.loads(body) == {"message": "privileged containers are not allowed"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "pre-hook POST /v1.41/containers/create?name=web [no_privileged] 200" in (
        proc.stderr.read()
    )
