"""The debug adapter in-process: it shows each call and the diff between calls for one request,
and never changes anything."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType

import pytest

from powerstrip.hooks.wire import ClientRequest, pre_hook_call
from powerstrip.testing import call_post, call_pre

DEBUG = Path(__file__).resolve().parents[2] / "adapters" / "debug.py"


@pytest.fixture
def debug() -> ModuleType:
    spec = importlib.util.spec_from_file_location("debug_adapter", DEBUG)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.show = module.Show(io.StringIO())
    return module


def output(debug: ModuleType) -> str:
    return debug.show.out.getvalue()


def pre(debug: ModuleType, body: object, call: str | None) -> tuple[int, dict]:
    payload = pre_hook_call(ClientRequest("POST", "/v1.41/containers/create", json.dumps(body)))
    results: list = []
    debug.app.handle(payload, call).addCallback(results.append)
    status, answer = results[0]
    return status, json.loads(answer)


def test_passes_requests_through_unchanged_and_shows_them(debug: ModuleType) -> None:
    body = '{"Image":"busybox","Env":["A=1"]}'
    result = call_pre(debug.app, "POST", "/v1.41/containers/create?name=x", body)
    assert result.request.body == body
    assert result.request.target == "/v1.41/containers/create?name=x"
    shown = output(debug)
    assert "POST /v1.41/containers/create?name=x" in shown
    assert '     "A=1"' in shown  # pretty-printed, indented
    assert "request (unpaired)" in shown


def test_passes_responses_through_unchanged_and_shows_them(debug: ModuleType) -> None:
    result = call_post(debug.app, "GET", "/v1.41/containers/json", None,
                       code=200, response='[{"Id":"abc"}]')
    assert result.response.body == '[{"Id":"abc"}]' and result.response.code == 200
    shown = output(debug)
    assert "→ 200 (application/json)" in shown and '"Id": "abc"' in shown


def test_second_call_for_a_request_shows_the_diff(debug: ModuleType) -> None:
    assert pre(debug, {"Image": "busybox"}, "r-1")[0] == 200
    assert pre(debug, {"Image": "busybox", "Labels": {"k": "v"}}, "r-1")[0] == 200
    shown = output(debug)
    assert "call 2" in shown and "changed since call 1:" in shown
    assert '   +     "Labels": {' in shown


def test_calls_of_other_requests_are_not_mixed_up(debug: ModuleType) -> None:
    pre(debug, {"Image": "busybox"}, "r-1")
    pre(debug, {"Image": "other"}, "r-2")
    pre(debug, {"Image": "busybox"}, "r-1")
    shown = output(debug)
    assert "request r-2 · call 1" in shown
    assert "unchanged since call 1" in shown


def test_bodies_that_are_not_json_or_absent(debug: ModuleType) -> None:
    call_pre(debug.app, "POST", "/v1.41/build", None)
    call_post(debug.app, "GET", "/_ping", None, code=200, response="OK", content_type="text/plain")
    shown = output(debug)
    assert "(no body shown)" in shown and "   OK" in shown


def test_remembers_a_bounded_number_of_requests(debug: ModuleType) -> None:
    for n in range(debug.REMEMBERED + 50):
        debug.show.call("pre-hook", f"r-{n}", ["x"])
    assert len(debug.show.seen) == debug.REMEMBERED
