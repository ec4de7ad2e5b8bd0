"""Which hooks a request gets and which responses post-hooks see; rewriting heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.core.framing import (
    ResponseReader,
    build_request_head,
    build_response,
    decode_chunked,
    parse_request_head,
)
from powerstrip.core.media import hidden_from_hooks, is_json, is_text, media_type
from powerstrip.core.paths import is_stream
from powerstrip.hooks.config import parse_config
from powerstrip.hooks.plans import make_plan


@pytest.mark.parametrize(
    ("path", "query", "stream"),
    [
        ("/v1.41/events", "", True),
        ("/events", "since=1", True),
        ("/v1.41/containers/abc/logs", "follow=1", True),
        ("/v1.41/containers/abc/logs", "", True),
        ("/v1.41/containers/abc/stats", "", True),
        ("/v1.41/containers/abc/stats", "stream=0", False),
        ("/v1.41/containers/abc/stats", "stream=false", False),
        ("/v1.41/containers/abc/wait", "condition=next-exit", True),
        ("/v1.41/containers/abc/attach", "stream=1", True),
        ("/v1.41/exec/e1/start", "", True),
        ("/v1.41/images/create", "fromImage=busybox", True),
        ("/v1.41/images/registry:5000/team/app/push", "", True),
        ("/v1.41/images/load", "", True),
        ("/v1.41/images/get", "names=busybox", True),
        ("/v1.41/build", "", True),
        ("/session", "", True),
        ("/v1.41/containers/abc/archive", "path=/", True),
        ("/v1.41/containers/abc/export", "", True),
        ("/v1.41/containers/create", "", False),
        ("/v1.41/containers/abc/json", "", False),
        ("/v1.41/containers/json", "", False),
        ("/_ping", "", False),
        ("/v1.41/images/busybox/json", "", False),
    ],
)
def test_streaming_responses(path, query, stream):
    assert is_stream(path, query) is stream


@pytest.mark.parametrize(
    ("value", "json_", "text"),
    [
        (b"application/json", True, True),
        (b"application/json; charset=utf-8", True, True),
        (b"Application/JSON", True, True),
        (b"application/vnd.docker.plugins.v1.2+json", True, True),
        (b"text/plain; charset=utf-8", False, True),
        (b"application/x-tar", False, False),
        (b"application/vnd.docker.raw-stream", False, False),
        (None, False, False),
    ],
)
def test_content_types(value, json_, text):
    assert is_json(value) is json_
    assert is_text(value) is text
    # The response head reads its Content-Type with the same rule.
    field = b"" if value is None else b"Content-Type: " + value + b"\r\n"
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n" + field + b"Content-Length: 0\r\n\r\n")
    assert reader.head is not None and reader.head.content_type == media_type(value)


@pytest.mark.parametrize(
    ("value", "media"),
    [
        (b"Application/JSON ; charset=utf-8", b"application/json"),
        (" text/plain;a=b", b"text/plain"),
        (b"", b""),
        (None, None),
    ],
)
def test_media_type(value, media):
    assert media_type(value) == media


CONFIG = """\
endpoints:
  "POST /*/containers/create":
    pre: [a, b]
    post: [c]
  "* *":
    pre: [c]
  "GET /*/containers/*/json":
    post: [a]
adapters:
  a: http://a/
  b: http://b/
  c: {url: "http://c/", timeout: 2}
"""


def test_hook_lists_concatenate_in_file_order():
    config = parse_config(CONFIG)
    create, catch_all, _ = config.endpoints
    plan = make_plan(config, [create, catch_all])
    assert [h.adapter.name for h in plan.pre] == ["a", "b", "c"]
    assert [h.adapter.name for h in plan.post] == ["c"]
    assert [h.endpoint for h in plan.pre] == [create.key, create.key, catch_all.key]
    assert plan.pre[2].adapter.timeout == 2
    assert plan.endpoints == '"POST /*/containers/create", "* *"'
    assert make_plan(config, []) is None


def test_request_head_rewrite_replaces_the_framing_of_a_rewritten_body():
    head = parse_request_head(
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    raw = build_request_head(b"POST", b"/v1.41/containers/create?name=b", head.headers, 11)
    again = parse_request_head(raw)
    assert again.target == b"/v1.41/containers/create?name=b"
    assert again.content_length == 11 and again.header(b"transfer-encoding") is None
    assert again.header(b"host") == b"x"


def test_request_head_rewrite_keeps_a_streamed_body_framing():
    head = parse_request_head(
        b"POST /build HTTP/1.1\r\nContent-Type: application/x-tar\r\nContent-Length: 99\r\n\r\n"
    )
    again = parse_request_head(build_request_head(b"PUT", b"/v1.41/build", head.headers, None))
    assert (again.method, again.content_length) == (b"PUT", 99)


@given(parts=st.lists(st.binary(min_size=1, max_size=50), max_size=6))
def test_decode_chunked(parts):
    raw = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX: y\r\n\r\n"
    assert decode_chunked(raw) == b"".join(parts)


@given(code=st.integers(200, 599), body=st.text(max_size=300))
def test_built_responses_frame_their_body(code, body):
    data = body.encode()
    raw = build_response(
        code, [(b"Api-Version", b"1.41"), (b"Content-Length", b"3"),
               (b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"text/plain")],
        b"application/json", data,
    )
    reader = ResponseReader(b"GET")
    reader.feed(raw)
    assert reader.complete and reader.head.status == code
    assert reader.head.header(b"api-version") == b"1.41"
    assert reader.head.header(b"content-type") == b"application/json"
    assert raw.endswith(b"\r\n\r\n" + (b"" if code in (204, 304) else data))


def test_load_time_warning_names_post_hooks_that_streams_pass_by():
    from powerstrip.hooks.live import stream_warnings

    config = parse_config(
        'endpoints:\n'
        '  "* *":\n    post: [a]\n'
        '  "GET /*/containers/*/json":\n    post: [a]\n'
        '  "POST /*/containers/*/wait":\n    pre: [a]\n'
        'adapters:\n  a: http://a/\n'
    )
    warnings = stream_warnings(config)
    assert len(warnings) == 1  # only the catch-all covers streams; pre-hooks always run
    assert '"* *" (line 2)' in warnings[0]
    assert "GET /v1.41/events" in warnings[0] and "POST /v1.41/containers/c/wait" in warnings[0]


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/x-www-form-urlencoded", True),
    ("Application/X-WWW-Form-Urlencoded; charset=utf-8", True),
    (b" application/x-www-form-urlencoded ", True),
    ("application/json", False),
    ("multipart/form-data; boundary=x", False),
    (None, False),
])
def test_form_bodies_are_recognised_as_go_parses_them(
    content_type: str | bytes | None, expected: bool
) -> None:
    headers = [] if content_type is None else [(b"Content-Type", content_type)]
    if isinstance(content_type, str):
        headers = [(b"Content-Type", content_type.encode())]
    assert (hidden_from_hooks(b"POST", headers, True) is not None) is expected


def test_what_else_hides_a_request_from_hooks() -> None:
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert hidden_from_hooks(b"GET", form, True) is None  # ParseForm reads no GET body
    assert hidden_from_hooks(b"POST", form, False) is None
    both = [(b"Content-Type", b"application/json"), (b"content-type", b"text/plain")]
    assert "more than one Content-Type" in (hidden_from_hooks(b"POST", both, True) or "")
    assert hidden_from_hooks(b"POST", [(b"Content-Type", b"application/json")], True) is None
