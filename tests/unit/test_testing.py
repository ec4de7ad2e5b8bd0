"""powerstrip.testing's in-process calls: they read answers as the proxy does."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from powerstrip.adapter import Adapter, Refuse, Request, Response
from powerstrip.testing import call_post, call_pre

app = Adapter("t")


@app.pre("POST /*/containers/create")
def tag(request: Request) -> Request:
    config = request.json
    if config.get("Image") == "forbidden":
        raise Refuse(403, "t: forbidden image")
    config["Labels"] = {"seen": request.call or "-"}
    return request.with_json(config)


@app.post("GET /*/containers/json")
def count(request: Request, response: Response) -> Response:
    return response.with_json({"count": len(response.json)})


@app.pre("GET /waits")
def waits(request: Request) -> defer.Deferred:
    return defer.Deferred()


def test_pre_hook_answer() -> None:
    result = call_pre(app, "POST", "/v1.41/containers/create", {"Image": "busybox"})
    assert result.status == 200 and not result.refused and result.message is None
    assert result.request.json == {"Image": "busybox", "Labels": {"seen": "-"}}
    assert result.request.method == "POST"


def test_pre_hook_refusal() -> None:
    result = call_pre(app, "POST", "/containers/create", '{"Image": "forbidden"}')
    assert result.refused and result.status == 403 and result.message == "t: forbidden image"
    with pytest.raises(AssertionError, match="403"):
        result.request  # noqa: B018


def test_post_hook_answer() -> None:
    result = call_post(app, "GET", "/v1.41/containers/json", None, response=[{}, {}])
    assert result.response.json == {"count": 2}
    assert result.response.code == 200


def test_unmatched_calls_come_back_unchanged() -> None:
    result = call_post(app, "GET", "/version", None, code=200, response='{"a": 1}',
                       content_type=None)
    assert result.response.body == '{"a": 1}' and result.response.content_type is None


def test_a_hook_that_waits_on_io_is_reported() -> None:
    with pytest.raises(AssertionError, match="running reactor"):
        call_pre(app, "GET", "/waits")
