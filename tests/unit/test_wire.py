"""The adapter wire format (protocol v1), byte for byte as original adapters expect it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.hooks.wire import (
    AnswerError,
    ClientRequest,
    ServerResponse,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
    refusal_message,
)

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"])
paths = st.from_regex(r"/(v1\.[0-9][0-9]/)?[a-z/]{0,30}(\?[a-z]+=[a-z0-9]{0,8})?", fullmatch=True)
bodies = st.none() | st.text(max_size=200)
requests = st.builds(ClientRequest, methods, paths, bodies)
responses = st.builds(
    ServerResponse, st.none() | st.sampled_from(["application/json", "text/plain"]),
    st.text(max_size=200), st.integers(100, 599),
)


def test_pre_hook_call_is_the_original_shape():
    call = json.loads(pre_hook_call(ClientRequest(
        "POST", "/v1.41/containers/create?name=web", '{"Image": "busybox"}')))
    assert call == {
        "PowerstripProtocolVersion": 1,
        "Type": "pre-hook",
        "ClientRequest": {"Method": "POST", "Request": "/v1.41/containers/create?name=web",
                          "Body": '{"Image": "busybox"}'},
    }


def test_post_hook_call_carries_the_response():
    call = json.loads(post_hook_call(
        ClientRequest("GET", "/v1.41/containers/x/json", None),
        ServerResponse(None, "", 204),
    ))
    assert call["Type"] == "post-hook"
    assert call["ClientRequest"]["Body"] is None
    assert call["ServerResponse"] == {"ContentType": None, "Body": "", "Code": 204}


@given(requests)
def test_pre_hook_echo_round_trips(request):
    """An adapter that echoes what it was sent changes nothing (the null adapter)."""
    call = json.loads(pre_hook_call(request))
    answer = json.dumps({"PowerstripProtocolVersion": 1,
                         "ModifiedClientRequest": call["ClientRequest"]}).encode()
    assert parse_pre_hook_answer(answer, request) == request


@given(requests, responses)
def test_post_hook_echo_round_trips(request, response):
    call = json.loads(post_hook_call(request, response))
    answer = json.dumps({"PowerstripProtocolVersion": 1,
                         "ModifiedServerResponse": call["ServerResponse"]}).encode()
    assert parse_post_hook_answer(answer, response) == response


@given(requests, requests)
def test_pre_hook_changes_are_applied(sent, changed):
    answer = json.dumps({"ModifiedClientRequest": changed.to_wire()}).encode()
    assert parse_pre_hook_answer(answer, sent) == changed


def test_fields_left_out_keep_what_was_sent():
    sent = ClientRequest("POST", "/containers/create", "{}")
    answer = b'{"PowerstripProtocolVersion": 1, "ModifiedClientRequest": {"Body": "{\\"a\\":1}"}}'
    assert parse_pre_hook_answer(answer, sent) == ClientRequest(
        "POST", "/containers/create", '{"a":1}')


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"PowerstripProtocolVersion": 1}', "no ModifiedClientRequest"),
        (b'{"ModifiedClientRequest": "POST"}', "no ModifiedClientRequest"),
        (b'{"ModifiedClientRequest": {"Method": 7}}', "Method must be str"),
        (b'{"ModifiedClientRequest": {"Method": "PO ST"}}', "not an HTTP method"),
        (b'{"ModifiedClientRequest": {"Request": "containers/json"}}', "not a request path"),
        (b'{"ModifiedClientRequest": {"Request": "/a\\r\\nX: y"}}', "not a request path"),
        (b'{"ModifiedClientRequest": {"Body": {"Image": "x"}}}', "Body must be str or null"),
        (b'{"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {}}',
         "does not say 'protocol: 2'"),
    ],
)
def test_bad_pre_hook_answers_say_what_is_wrong(answer, complaint):
    with pytest.raises(AnswerError, match=complaint):
        parse_pre_hook_answer(answer, ClientRequest("GET", "/_ping", None))


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b'{"ModifiedClientRequest": {}}', "no ModifiedServerResponse"),
        (b'{"ModifiedServerResponse": {"Code": "200"}}', "Code must be int"),
        (b'{"ModifiedServerResponse": {"Code": true}}', "Code must be int"),
        (b'{"ModifiedServerResponse": {"Code": 1000}}', "not an HTTP status"),
        (b'{"ModifiedServerResponse": {"ContentType": "a\\nb"}}', "not a header value"),
    ],
)
def test_bad_post_hook_answers_say_what_is_wrong(answer, complaint):
    with pytest.raises(AnswerError, match=complaint):
        parse_post_hook_answer(answer, ServerResponse("application/json", "{}", 200))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"message": "privileged containers are not allowed"}',
         "privileged containers are not allowed"),
        (b'{"error": "no"}', "no"),
        (b"plain words\n", "plain words"),
        (b"", ""),
    ],
)
def test_refusal_message_takes_the_adapters_words(body, message):
    assert refusal_message(body) == message


def test_a_pre_hooks_changed_body_is_respelled_before_anyone_sees_it() -> None:
    """A pre-hook that writes a body in another spelling: the next hook, and the daemon, see it
    as the daemon decodes it; a body with no such spelling is the adapter's bad answer."""
    from powerstrip.core.canonical import body_shape, respell

    shape = body_shape("POST", "/v1.41/containers/create")
    sent = ClientRequest("POST", "/v1.41/containers/create", '{"Image":"busybox"}',
                         lambda text: respell(shape, text))
    answer = json.dumps({"ModifiedClientRequest": {
        "Body": '{"Image":"busybox","hostconfig":{"privileged":true}}'}}).encode()
    changed = parse_pre_hook_answer(answer, sent)
    assert changed.body == '{"Image":"busybox","HostConfig":{"Privileged":true}}'
    assert changed.respell is sent.respell
    unchanged = parse_pre_hook_answer(json.dumps({"ModifiedClientRequest": {}}).encode(), sent)
    assert unchanged.body == sent.body
    bad = json.dumps({"ModifiedClientRequest": {
        "Body": '{"HostConfig":{"Privileged":true,"Privileged":null}}'}}).encode()
    with pytest.raises(AnswerError, match="cannot be shown as the daemon would read it"):
        parse_pre_hook_answer(bad, sent)
