"""The SDK and the test kit in protocol version 2: who asked, and the headers."""

from __future__ import annotations

import json
import logging

from powerstrip.hooks.wire import REDACTED, ClientRequest, pre_hook_call
from powerstrip.kit.sdk import Adapter, Headers, Refuse
from powerstrip.testing import call_post, call_pre, tcp_client, tls_client, unix_client


def make_app() -> Adapter:
    app = Adapter("who", protocol=2)

    @app.pre("POST /*/containers/create")
    def only_ci(req):
        if req.client is None or req.client.user != "ci":
            who = "nobody known" if req.client is None else req.client.describe()
            raise Refuse(403, f"only ci may create containers, not {who}")
        return req.replace(headers=req.headers.set("X-Checked-By", "who"))

    @app.post("GET /*/containers/*/json")
    def tag(req, resp):
        return resp.replace(headers=resp.headers.set("X-Seen-By", req.client.describe()))

    return app


def test_a_hook_sees_the_client_and_changes_the_headers():
    result = call_pre(make_app(), "POST", "/v1.41/containers/create", {"Image": "busybox"},
                      client=unix_client("ci", uid=1001, groups=["ci", "docker"]))
    assert not result.refused, result.message
    assert result.document["PowerstripProtocolVersion"] == 2
    assert result.request.headers.first("X-Checked-By") == "who"
    assert result.request.headers.first("User-Agent").startswith("Docker-Client/")


def test_a_refusal_names_the_client_it_was_given():
    result = call_pre(make_app(), "POST", "/v1.41/containers/create", {"Image": "busybox"},
                      client=tls_client("mallory", sans=["m.example"]))
    assert result.status == 403
    assert "CN=mallory" in result.message
    assert call_pre(make_app(), "POST", "/v1.41/containers/create", {},
                    client=tcp_client("10.0.0.9:4000")).message.endswith(
        "not tcp client 10.0.0.9:4000")


def test_a_post_hook_changes_response_headers():
    result = call_post(make_app(), "GET", "/v1.41/containers/x/json", code=200,
                       response={"Id": "x"}, client=unix_client("ops", uid=1002),
                       response_headers={"Content-Type": ["application/json"],
                                         "Api-Version": ["1.51"]})
    headers = result.response.headers
    assert headers.first("X-Seen-By") == "unix user ops (uid 1002)"
    assert headers.first("Api-Version") == "1.51"


def test_credentials_are_redacted_unless_asked_for():
    seen: list[Headers] = []
    app = Adapter("creds", protocol=2)

    @app.pre("POST /*/images/create")
    def look(req):
        seen.append(req.headers)

    headers = {"X-Registry-Auth": ["c2VjcmV0"]}
    call_pre(app, "POST", "/v1.41/images/create?fromImage=busybox", headers=headers)
    call_pre(app, "POST", "/v1.41/images/create?fromImage=busybox", headers=headers,
             credentials=True)
    assert [h.first("X-Registry-Auth") for h in seen] == [REDACTED, "c2VjcmV0"]


def test_an_adapter_written_for_version_2_says_so_when_called_with_version_1(caplog):
    app = make_app()
    payload = pre_hook_call(ClientRequest("POST", "/v1.41/containers/create", "{}"))
    with caplog.at_level(logging.WARNING, logger="powerstrip.adapter"):
        status, body = app.handle(payload).result
        app.handle(payload)
    assert status == 403 and "nobody known" in json.loads(body)["message"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'protocol: 2'" in warnings[0]


def test_a_version_2_adapter_answers_a_version_1_call_in_version_1():
    app = Adapter("new", protocol=2)

    @app.pre("POST /*/containers/create")
    def keep(req):
        assert req.client is None and not req.headers
        return req.replace(headers=Headers({"X-A": ["1"]}))

    result = call_pre(app, "POST", "/v1.41/containers/create", {}, protocol=1)
    assert result.document["PowerstripProtocolVersion"] == 1
    assert "Headers" not in result.document["ModifiedClientRequest"]


def test_a_version_1_adapter_answers_version_2_calls_in_version_1():
    app = Adapter("old")

    @app.pre("POST /*/containers/create")
    def keep(req):
        return req

    result = call_pre(app, "POST", "/v1.41/containers/create", {}, protocol=2)
    assert result.document["PowerstripProtocolVersion"] == 1
    assert "Headers" not in result.document["ModifiedClientRequest"]
    assert call_pre(app, "POST", "/v1.41/containers/create", {}).document[
        "PowerstripProtocolVersion"] == 1
