"""An SDK adapter answering Docker's plugin calls: activation lists what it implements, its
pre-hooks decide AuthZReq and its post-hooks AuthZRes from the same functions, a refusal denies
with the hook's message, and a hook that would change the request denies (an authorization
plugin cannot rewrite), as do a hook that fails and a body dockerd did not show."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import defer

from powerstrip.kit.plugin import PluginServer
from powerstrip.kit.sdk import Adapter, Refuse


def settle(coroutine: Any) -> Any:
    results: list[Any] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    assert results, "the call did not finish at once"
    return results[0]


def make_adapter() -> Adapter:
    app = Adapter("guard", protocol=2)

    @app.pre("POST /*/containers/create")
    def no_privileged(req):
        if (req.json or {}).get("HostConfig", {}).get("Privileged"):
            raise Refuse(403, f"no privileged containers for {req.client.describe()}")
        return req

    @app.pre("POST /*/containers/*/start")
    def rename(req):
        return req.replace(path=req.path.replace("start", "stop"))

    @app.pre("DELETE /*/images/*")
    def broken(req):
        raise RuntimeError("boom")

    @app.post("GET /*/containers/*/json")
    def hide(req, resp):
        if "secret" in (resp.body or ""):
            raise Refuse(403, "that container is not yours")
        return resp

    return app


def call(plugin: PluginServer, path: str, **document: Any) -> tuple[int, dict[str, Any]]:
    return settle(plugin.call(path, json.dumps(document).encode()))


def create(body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(body).encode()
    return {"RequestMethod": "POST", "RequestUri": "/v1.41/containers/create",
            "RequestHeaders": {"Content-Type": "application/json",
                               "Content-Length": str(len(text))},
            "RequestBody": base64.b64encode(text).decode()}


def test_activation_lists_authz_and_the_drivers():
    plugin = PluginServer(make_adapter(), "guard")
    assert settle(plugin.call("/Plugin.Activate", b"")) == (200, {"Implements": ["authz"]})
    bare = Adapter("bare")
    assert settle(PluginServer(bare, "bare").call("/Plugin.Activate", b""))[1] == {
        "Implements": []}
    status, answer = settle(PluginServer(bare, "bare").call("/AuthZPlugin.AuthZReq", b"{}"))
    assert status == 404 and "does not implement /AuthZPlugin.AuthZReq" in answer["Err"]


def test_pre_hooks_decide_authz_requests():
    plugin = PluginServer(make_adapter(), "guard")
    assert call(plugin, "/AuthZPlugin.AuthZReq", **create({"Image": "busybox"})) == (
        200, {"Allow": True})
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq",
                          **create({"Image": "busybox", "HostConfig": {"Privileged": True}}))
    assert status == 200 and answer == {
        "Allow": False, "Msg": "no privileged containers for unix client of dockerd "
                               "(credentials unknown)"}
    # Another spelling of the same body is judged as the daemon reads it.
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq",
                          **create({"image": "busybox", "hostconfig": {"privileged": 1 == 1}}))
    assert answer["Allow"] is False
    # A TLS user of dockerd's is the client the hooks see.
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq", User="alice", UserAuthNMethod="TLS",
                          **create({"HostConfig": {"Privileged": True}}))
    assert "tls client CN=alice" in answer["Msg"]
    # No hook for the endpoint: allowed.
    assert call(plugin, "/AuthZPlugin.AuthZReq", RequestMethod="GET",
                RequestUri="/v1.41/info") == (200, {"Allow": True})


def test_a_hook_that_would_rewrite_denies_and_says_why():
    plugin = PluginServer(make_adapter(), "guard")
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq", RequestMethod="POST",
                          RequestUri="/v1.41/containers/web/start")
    assert answer["Allow"] is False
    assert "would change Request" in answer["Msg"] and "cannot do" in answer["Msg"]


def test_a_failing_hook_and_a_hidden_body_deny():
    plugin = PluginServer(make_adapter(), "guard")
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq", RequestMethod="DELETE",
                          RequestUri="/v1.41/images/busybox")
    assert answer["Allow"] is False and "broken failed: RuntimeError: boom" in answer["Msg"]
    chunked = create({"HostConfig": {"Privileged": True}})
    del chunked["RequestBody"], chunked["RequestHeaders"]["Content-Length"]
    status, answer = call(plugin, "/AuthZPlugin.AuthZReq", **chunked)
    assert answer["Allow"] is False and "did not show" in answer["Msg"]
    status, answer = settle(plugin.call("/AuthZPlugin.AuthZReq", b"[]"))
    assert status == 400 and "not an object" in answer["Err"]


def test_post_hooks_decide_authz_responses():
    plugin = PluginServer(make_adapter(), "guard")

    def inspect(body: bytes) -> dict[str, Any]:
        return call(plugin, "/AuthZPlugin.AuthZRes", RequestMethod="GET",
                    RequestUri="/v1.41/containers/web/json", ResponseStatusCode=200,
                    ResponseHeaders={"Content-Type": "application/json"},
                    ResponseBody=base64.b64encode(body).decode())[1]

    assert inspect(b'{"Name": "web"}') == {"Allow": True}
    assert inspect(b'{"Name": "secret"}') == {"Allow": False,
                                              "Msg": "that container is not yours"}
