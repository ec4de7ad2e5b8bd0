"""Adapter protocol version 2: the client and the headers, and what an answer may change."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.core.identity import Certificate, Client
from powerstrip.hooks.wire import (
    REDACTED,
    AnswerError,
    CallError,
    ClientRequest,
    Headers,
    ServerResponse,
    canonical_header,
    client_to_wire,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
    read_hook_call,
)

ALICE = Client("tls", "127.0.0.1:53422", certificate=Certificate(
    "CN=alice,O=dev", "alice", ("alice.example",), "9f86d0"))
ROOT = Client("unix", "/run/powerstrip.sock", 0, 0, 4242, "root", ("root", "docker"))
HEADERS = (
    ("Host", "docker"), ("content-type", "application/json"), ("User-Agent", "Docker-Client/28"),
    ("X-Registry-Auth", "c2VjcmV0"), ("x-custom", "one"), ("X-CUSTOM", "two"),
    ("Content-Length", "19"),
)
CREATE = ClientRequest("POST", "/v1.41/containers/create", '{"Image": "busybox"}',
                       headers=HEADERS)
RESPONSE = ServerResponse("application/json", '{"Id": "abc"}', 201,
                          (("Api-Version", "1.51"), ("Content-Type", "application/json"),
                           ("Server", "Docker/28"), ("Content-Length", "13")))


@pytest.mark.parametrize("name,canonical", [
    ("content-type", "Content-Type"), ("X-REGISTRY-AUTH", "X-Registry-Auth"),
    ("user-agent", "User-Agent"), ("te", "Te"), ("api-version", "Api-Version"),
    ("x", "X"), ("foo bar", "foo bar"), ("", ""),
])
def test_header_names_are_canonical_as_go_writes_them(name, canonical):
    assert canonical_header(name) == canonical


def test_a_version_1_call_shows_no_headers_and_no_client():
    assert pre_hook_call(CREATE) == json.dumps({
        "PowerstripProtocolVersion": 1, "Type": "pre-hook",
        "ClientRequest": {"Method": "POST", "Request": "/v1.41/containers/create",
                          "Body": '{"Image": "busybox"}'},
    }).encode()
    assert b"Headers" not in post_hook_call(CREATE, RESPONSE)


def test_a_version_2_call_has_the_client_and_the_headers():
    call = json.loads(pre_hook_call(CREATE, version=2, client=ALICE))
    assert list(call) == ["PowerstripProtocolVersion", "Type", "Client", "ClientRequest"]
    assert call["PowerstripProtocolVersion"] == 2
    assert call["Client"] == {
        "Transport": "tls", "Address": "127.0.0.1:53422", "UID": None, "GID": None,
        "PID": None, "User": None, "Groups": [],
        "Certificate": {"Subject": "CN=alice,O=dev", "CommonName": "alice",
                        "SANs": ["alice.example"], "SHA256": "9f86d0"},
    }
    assert call["ClientRequest"]["Headers"] == {
        "Host": ["docker"], "Content-Type": ["application/json"],
        "User-Agent": ["Docker-Client/28"], "X-Registry-Auth": [REDACTED],
        "X-Custom": ["one", "two"], "Content-Length": ["19"],
    }


def test_credentials_are_shown_only_when_the_mapping_says_so():
    shown = json.loads(pre_hook_call(CREATE, version=2, client=ROOT, credentials=True))
    assert shown["ClientRequest"]["Headers"]["X-Registry-Auth"] == ["c2VjcmV0"]
    config = ClientRequest("POST", "/build", None, headers=(
        ("X-Registry-Config", "a"), ("X-Registry-Config", "b")))
    hidden = json.loads(pre_hook_call(config, version=2, client=ROOT))
    assert hidden["ClientRequest"]["Headers"]["X-Registry-Config"] == [REDACTED]
    assert b"c2VjcmV0" not in post_hook_call(CREATE, RESPONSE, version=2, client=ROOT)


def test_a_post_hook_call_shows_the_response_headers():
    call = json.loads(post_hook_call(CREATE, RESPONSE, version=2, client=ROOT))
    assert call["Client"]["UID"] == 0 and call["Client"]["Groups"] == ["root", "docker"]
    assert call["ServerResponse"]["Headers"]["Api-Version"] == ["1.51"]
    assert list(call["ServerResponse"]) == ["ContentType", "Body", "Code", "Headers"]


def _pre_answer(headers: object, version: int = 2) -> bytes:
    return json.dumps({"PowerstripProtocolVersion": version,
                       "ModifiedClientRequest": {"Headers": headers}}).encode()


def _shown(request: ClientRequest = CREATE) -> dict:
    return json.loads(pre_hook_call(request, version=2, client=ROOT))["ClientRequest"]["Headers"]


def test_an_echo_changes_nothing_not_even_spelling():
    changed = parse_pre_hook_answer(_pre_answer(_shown()), CREATE, version=2)
    assert changed.headers is CREATE.headers


def test_an_answer_adds_removes_and_replaces_headers():
    headers = {**_shown(), "X-Added": ["yes"], "User-Agent": ["other"]}
    del headers["X-Custom"]
    changed = parse_pre_hook_answer(_pre_answer(headers), CREATE, version=2)
    result = Headers(changed.headers)
    assert result["X-Added"] == ("yes",) and result["User-Agent"] == ("other",)
    assert "X-Custom" not in result
    # The redacted credential was echoed: the real one goes on.
    assert result["X-Registry-Auth"] == ("c2VjcmV0",)
    # What the proxy owns keeps its spelling and value.
    assert ("Host", "docker") in changed.headers and ("Content-Length", "19") in changed.headers


def test_a_credential_may_be_replaced_or_dropped():
    replaced = parse_pre_hook_answer(_pre_answer({**_shown(), "X-Registry-Auth": ["new"]}),
                                     CREATE, version=2)
    assert Headers(replaced.headers)["X-Registry-Auth"] == ("new",)
    headers = _shown()
    del headers["X-Registry-Auth"]
    dropped = parse_pre_hook_answer(_pre_answer(headers), CREATE, version=2)
    assert "X-Registry-Auth" not in Headers(dropped.headers)


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Connection", "Upgrade",
                                  "Host", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization",
                                  "transfer-encoding"])
def test_a_header_the_proxy_owns_cannot_be_set(name):
    with pytest.raises(AnswerError, match=f"sets {canonical_header(name)}, which the proxy owns"):
        parse_pre_hook_answer(_pre_answer({**_shown(), name: ["forged"]}), CREATE, version=2)


def test_owned_headers_may_be_left_out_and_stay():
    headers = {k: v for k, v in _shown().items() if k not in ("Host", "Content-Length")}
    headers["X-Added"] = ["1"]
    changed = parse_pre_hook_answer(_pre_answer(headers), CREATE, version=2)
    assert ("Host", "docker") in changed.headers and ("Content-Length", "19") in changed.headers


@pytest.mark.parametrize("headers,words", [
    ([], "must be an object"),
    ({"X-A": "one"}, "must be a list of strings"),
    ({"X-A": [1]}, "must be a list of strings"),
    ({"X A": ["1"]}, "not an HTTP header name"),
    ({"X-A": ["a\r\nX-Evil: 1"]}, "cannot be sent as a header"),
    ({"X-A": ["nul\x00"]}, "cannot be sent as a header"),
    ({"X-A": ["\u2603"]}, "cannot be sent as a header"),
    ({"x-a": ["1"], "X-A": ["2"]}, "names X-A twice"),
])
def test_bad_headers_in_an_answer_say_what_is_wrong(headers, words):
    with pytest.raises(AnswerError, match=words):
        parse_pre_hook_answer(_pre_answer(headers), CREATE, version=2)


def test_a_version_1_adapter_cannot_change_headers():
    # Version 1 knows no Headers: like any field it does not know, it means nothing.
    answer = _pre_answer({"X-Added": ["1"]}, version=1)
    assert parse_pre_hook_answer(answer, CREATE).headers is CREATE.headers
    with pytest.raises(AnswerError, match="does not say 'protocol: 2'"):
        parse_pre_hook_answer(_pre_answer({}, version=2), CREATE)


def test_a_version_2_adapter_may_answer_in_version_1():
    answer = json.dumps({"ModifiedClientRequest": {"Method": "GET"}}).encode()
    assert parse_pre_hook_answer(answer, CREATE, version=2).method == "GET"


def _post_answer(**fields: object) -> bytes:
    return json.dumps({"PowerstripProtocolVersion": 2,
                       "ModifiedServerResponse": fields}).encode()


def _response_shown() -> dict:
    call = json.loads(post_hook_call(CREATE, RESPONSE, version=2, client=ROOT))
    return call["ServerResponse"]["Headers"]


def test_a_post_hook_changes_response_headers():
    headers = {**_response_shown(), "X-Seen": ["yes"]}
    changed = parse_post_hook_answer(_post_answer(Headers=headers), RESPONSE, version=2)
    assert Headers(changed.headers)["X-Seen"] == ("yes",)
    assert changed.content_type == "application/json"


def test_the_content_type_field_wins_over_the_headers():
    headers = {**_response_shown(), "Content-Type": ["text/plain"]}
    by_headers = parse_post_hook_answer(_post_answer(Headers=headers), RESPONSE, version=2)
    assert by_headers.content_type == "text/plain"
    both = parse_post_hook_answer(_post_answer(Headers=headers, ContentType="text/csv"),
                                  RESPONSE, version=2)
    assert both.content_type == "text/csv"
    without = {k: v for k, v in _response_shown().items() if k != "Content-Type"}
    removed = parse_post_hook_answer(_post_answer(Headers=without), RESPONSE, version=2)
    assert removed.content_type is None


def test_a_post_hook_cannot_set_the_framing():
    with pytest.raises(AnswerError, match="Transfer-Encoding, which the proxy owns"):
        parse_post_hook_answer(
            _post_answer(Headers={**_response_shown(), "Transfer-Encoding": ["chunked"]}),
            RESPONSE, version=2)


# -- the adapter's side ---------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=20)
clients = st.one_of(
    st.builds(Client, st.just("unix"), st.text(max_size=20), st.integers(0, 2**31),
              st.integers(0, 2**31), st.integers(1, 2**22), st.none() | st.text(max_size=8),
              st.lists(st.text(max_size=8), max_size=3).map(tuple)),
    st.builds(Client, st.sampled_from(["tcp", "tls"]), st.text(max_size=20)),
    st.builds(lambda cn, sans, address: Client("tls", address, certificate=Certificate(
        f"CN={cn}", cn, tuple(sans), "ab" * 32)),
        st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3), st.text(max_size=20)),
)


@given(clients, st.lists(st.tuples(names, values), max_size=8))
def test_an_adapter_reads_back_what_the_proxy_sent(client, pairs):
    request = ClientRequest("POST", "/v1.41/containers/create", None, headers=tuple(pairs))
    call = read_hook_call(pre_hook_call(request, version=2, client=client, credentials=True))
    assert call.version == 2 and call.kind == "pre-hook"
    assert call.client == client
    assert Headers(call.request.headers) == Headers(pairs)
    assert client_to_wire(call.client) == client_to_wire(client)


@pytest.mark.parametrize("change,words", [
    ({"Client": None}, "no Client"),
    ({"Client": {"Transport": "udp", "Address": "x"}}, "unix, tcp or tls"),
    ({"Client": {"Transport": "tcp", "Address": "x", "UID": "0"}}, "UID"),
    ({"Client": {"Transport": "tls", "Address": "x", "Certificate": {"Subject": "CN=a"}}},
     "SHA256"),
])
def test_a_bad_version_2_call_says_what_is_wrong(change, words):
    call = {**json.loads(pre_hook_call(CREATE, version=2, client=ROOT)), **change}
    with pytest.raises(CallError, match=words):
        read_hook_call(json.dumps(call).encode())


def test_headers_are_a_case_insensitive_immutable_mapping():
    headers = Headers({"content-type": ["application/json"], "X-A": ["1", "2"]})
    assert headers["Content-Type"] == ("application/json",)
    assert headers.first("x-a") == "1" and headers.first("missing") is None
    assert "CONTENT-TYPE" in headers
    changed = headers.set("x-b", "3").remove("X-A")
    assert dict(changed) == {"Content-Type": ("application/json",), "X-B": ("3",)}
    assert dict(headers) == {"Content-Type": ("application/json",), "X-A": ("1", "2")}
    assert headers.to_wire() == {"Content-Type": ["application/json"], "X-A": ["1", "2"]}


def test_an_answer_the_wire_cannot_carry_is_a_bad_answer():
    """A request line and a header are bytes; the proxy shows them as Latin-1. An answer with
    characters beyond it is refused here, not left to fail when the bytes are written."""
    sent = ClientRequest("GET", "/v1.41/info", None)
    answer = json.dumps({"ModifiedClientRequest": {"Request": "/x?name=\u2603"}}).encode()
    with pytest.raises(AnswerError, match="beyond Latin-1"):
        parse_pre_hook_answer(answer, sent)
    response = ServerResponse("application/json", "{}", 200,
                              (("Content-Type", "application/json"),))
    answer = json.dumps({"ModifiedServerResponse": {"ContentType": "text/\u2603"}}).encode()
    with pytest.raises(AnswerError, match="ContentType is not a header value"):
        parse_post_hook_answer(answer, response)


def test_a_changed_content_type_is_what_the_next_post_hook_is_shown():
    """Post-hook 1 changes ContentType; post-hook 2, shown the headers, only adds one: the
    response keeps post-hook 1's Content-Type."""
    sent = ServerResponse("application/json", "{}", 200,
                          (("Content-Type", "application/json"), ("Api-Version", "1.41")))
    first = parse_post_hook_answer(json.dumps(
        {"ModifiedServerResponse": {"ContentType": "text/plain"}}).encode(), sent, version=2)
    assert first.content_type == "text/plain"
    assert dict(first.headers)["Content-Type"] == "text/plain"
    from powerstrip.hooks.wire import headers_to_wire

    shown = headers_to_wire(first.headers, credentials=False)
    second = parse_post_hook_answer(json.dumps({"PowerstripProtocolVersion": 2,
        "ModifiedServerResponse": {"Headers": {**shown, "X-Seen": ["yes"]}}}).encode(),
        first, version=2)
    assert second.content_type == "text/plain"
    assert dict(second.headers)["X-Seen"] == "yes"
