"""docs/protocol.schema.json against what the wire module really sends and accepts: every call
Powerstrip makes, for each protocol version and kind of client, validates against its
definition and no other; answers made by the SDK's helpers validate; and every full document
shown in docs/protocol.md validates, so the docs cannot drift from the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from powerstrip.hooks.wire import (
    OWNED_HEADERS,
    AnswerError,
    ClientRequest,
    ServerResponse,
    canonical_header,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_answer,
    post_hook_call,
    pre_hook_answer,
    pre_hook_call,
    read_hook_call,
)
from powerstrip.kit.testing import tcp_client, tls_client, unix_client

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMA = json.loads((DOCS / "protocol.schema.json").read_text())
CALLS = ("v1PreHookCall", "v1PostHookCall", "v2PreHookCall", "v2PostHookCall")
CLIENTS = {
    "unix": unix_client("ci", uid=1001, groups=("ci", "docker")),
    "tcp": tcp_client("10.0.0.7:53422"),
    "tls": tls_client("alice", sans=("alice.example",), subject="CN=alice,O=dev",
                      sha256="9f86d0" + "0" * 58),
    "tls without a certificate": tls_client(),
}
REQUEST = ClientRequest(
    "POST", "/v1.47/containers/create?name=web", '{"Image": "busybox"}',
    headers=(("Content-Type", "application/json"), ("x-registry-auth", "c2VjcmV0"),
             ("User-Agent", "Docker-Client/28.2.2 (linux)")))
RESPONSE = ServerResponse("application/json", '{"Id": "abc"}', 201,
                          headers=(("Content-Type", "application/json"), ("Api-Version", "1.47")))


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{name}"})


def definitions_matching(document: Any, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if validator(name).is_valid(document)]


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("credentials", [False, True])
def test_each_call_matches_its_own_definition_only(client, credentials):
    made = {
        "v1PreHookCall": pre_hook_call(REQUEST),
        "v1PostHookCall": post_hook_call(REQUEST, RESPONSE),
        "v2PreHookCall": pre_hook_call(REQUEST, version=2, client=CLIENTS[client],
                                       credentials=credentials),
        "v2PostHookCall": post_hook_call(REQUEST, RESPONSE, version=2, client=CLIENTS[client],
                                         credentials=credentials),
    }
    for name, payload in made.items():
        document = json.loads(payload)
        assert definitions_matching(document, CALLS) == [name], document
        jsonschema.validate(document, SCHEMA)  # the top level takes any call


def test_a_v1_call_is_no_v2_call_and_a_v2_call_needs_its_client():
    v1 = json.loads(pre_hook_call(REQUEST))
    assert not validator("v2PreHookCall").is_valid(v1)
    assert not validator("v2PostHookCall").is_valid(json.loads(post_hook_call(REQUEST, RESPONSE)))
    # Not even claiming version 2: it has neither Client nor Headers.
    assert not validator("v2PreHookCall").is_valid({**v1, "PowerstripProtocolVersion": 2})
    v2 = json.loads(pre_hook_call(REQUEST, version=2, client=CLIENTS["unix"]))
    del v2["Client"]
    assert not validator("call").is_valid(v2)
    v2 = json.loads(pre_hook_call(REQUEST, version=2, client=CLIENTS["tcp"]))
    v2["Client"]["UID"] = 0  # a tcp client has no uid: nothing proves one
    assert not validator("call").is_valid(v2)


@given(st.lists(st.tuples(st.sampled_from(["Content-Type", "x-registry-auth", "X-Registry-Config",
                                           "accept", "X-Custom-Header"]),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255),
                                  max_size=20)),
                max_size=6),
       st.booleans(), st.sampled_from(list(CLIENTS)))
def test_any_headers_the_proxy_shows_validate(headers, credentials, client):
    request = ClientRequest("GET", "/v1.47/info", None, headers=tuple(headers))
    document = json.loads(pre_hook_call(request, version=2, client=CLIENTS[client],
                                        credentials=credentials))
    validator("v2PreHookCall").validate(document)
    shown = document["ClientRequest"]["Headers"]
    for name in ("X-Registry-Auth", "X-Registry-Config"):
        if name in shown and not credentials:
            assert shown[name] == ["<redacted>"]


@pytest.mark.parametrize("version", [1, 2])
def test_the_answers_the_sdk_makes_validate_and_are_read_back(version):
    changed = ClientRequest("POST", "/v1.47/containers/create", '{"Image": "alpine"}',
                            headers=(("Content-Type", "application/json"), ("X-Trace", "1")))
    pre = pre_hook_answer(changed, version)
    assert definitions_matching(pre, ("v1PreHookAnswer", "v2PreHookAnswer")) == \
        [f"v{version}PreHookAnswer"]
    read = parse_pre_hook_answer(json.dumps(pre).encode(), REQUEST, version=version,
                                 credentials=True)
    assert read.body == changed.body
    post = post_hook_answer(RESPONSE, version)
    assert definitions_matching(post, ("v1PostHookAnswer", "v2PostHookAnswer")) == \
        [f"v{version}PostHookAnswer"]
    parse_post_hook_answer(json.dumps(post).encode(), RESPONSE, version=version)


def test_an_answer_may_leave_fields_out_and_set_headers():
    answer = {"PowerstripProtocolVersion": 2,
              "ModifiedClientRequest": {"Headers": {"X-Trace": ["1"]}}}
    validator("preHookAnswer").validate(answer)
    assert dict(parse_pre_hook_answer(json.dumps(answer).encode(), REQUEST, version=2)
                .headers)["X-Trace"] == "1"
    validator("preHookAnswer").validate({"ModifiedClientRequest": {}})  # v1 by default


@pytest.mark.parametrize("answer", [
    {"ModifiedClientRequest": {"Method": "GET POST"}},
    {"ModifiedClientRequest": {"Method": "GET\n"}},
    {"ModifiedClientRequest": {"Request": "no-slash"}},
    {"ModifiedClientRequest": {"Request": "/info\n"}},
    {"ModifiedClientRequest": {"Body": 3}},
    {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": {"X": "not a list"}}},
    {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": {"X": ["a\r\nB: c"]}}},
    {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": {"X": ["a\n"]}}},
    {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": {"X\n": ["a"]}}},
    {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": {"X": ["\u2603"]}}},
    {"PowerstripProtocolVersion": 3, "ModifiedClientRequest": {}},
    {"PowerstripProtocolVersion": 1},
])
def test_answers_the_schema_refuses_the_proxy_refuses(answer):
    assert not validator("preHookAnswer").is_valid(answer)
    with pytest.raises(AnswerError):
        parse_pre_hook_answer(json.dumps(answer).encode(), REQUEST, version=2)


header_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,8}", fullmatch=True),
    st.text(max_size=6),
)
header_values = st.text(st.one_of(st.characters(max_codepoint=0x17F),
                                  st.sampled_from(["\r", "\n", "\x00", "\u2603", "\U0001F600"])),
                        max_size=6)


@given(st.dictionaries(header_names, st.one_of(st.lists(header_values, max_size=3),
                                               header_values, st.integers()), max_size=4))
def test_the_schema_takes_the_answer_headers_the_proxy_takes(headers):
    # What the schema cannot say: a name given twice in two spellings, and the headers the
    # proxy owns (whose values only the sent request knows).
    names = [canonical_header(name) for name in headers]
    assume(len(set(names)) == len(names) and not OWNED_HEADERS & set(names))
    answer = {"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Headers": headers}}
    sent = ClientRequest("GET", "/v1.47/info", None)
    try:
        parse_pre_hook_answer(json.dumps(answer).encode(), sent, version=2)
    except AnswerError:
        accepted = False
    else:
        accepted = True
    assert validator("v2PreHookAnswer").is_valid(answer) == accepted


def _documented() -> list[dict[str, Any]]:
    text = (DOCS / "protocol.md").read_text()
    documents = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        try:
            document = json.loads(block)
        except ValueError:
            continue  # a fragment, not a whole document
        if isinstance(document, dict) and (
                "Type" in document or any(k.startswith("Modified") for k in document)):
            documents.append(document)
    return documents


def test_every_document_in_protocol_md_validates():
    documents = _documented()
    kinds = {(d.get("PowerstripProtocolVersion", 1), d.get("Type", "answer")) for d in documents}
    # Both versions' calls are shown, and answers.
    assert {(1, "pre-hook"), (1, "post-hook"), (2, "pre-hook"), (2, "post-hook"),
            (1, "answer"), (2, "answer")} <= kinds, kinds
    for document in documents:
        jsonschema.validate(document, SCHEMA)
        version = document.get("PowerstripProtocolVersion", 1)
        if "Type" in document:
            name = f"v{version}{'Pre' if document['Type'] == 'pre-hook' else 'Post'}HookCall"
        else:
            name = f"v{version}{'Pre' if 'ModifiedClientRequest' in document else 'Post'}HookAnswer"
        validator(name).validate(document)


def test_the_documented_v2_answer_is_one_the_proxy_takes():
    documents = _documented()
    call = next(d for d in documents
                if d.get("PowerstripProtocolVersion") == 2 and d.get("Type") == "pre-hook")
    answer = next(d for d in documents
                  if d.get("PowerstripProtocolVersion") == 2 and "ModifiedClientRequest" in d)
    sent = read_hook_call(json.dumps(call).encode()).request
    changed = parse_pre_hook_answer(json.dumps(answer).encode(), sent, version=2)
    # The headers the proxy owns, left out of the answer, go on as they came.
    assert [(n, v) for n, v in changed.headers if n in OWNED_HEADERS] == \
        [(n, v) for n, v in sent.headers if n in OWNED_HEADERS]
    assert ("X-Checked-By", "policy") in changed.headers
