"""``core.canonical``: a JSON body in the one spelling that Go's decoder and a naive JSON reader
read alike. The property: for any spelling of a create body (keys in any case, repeated, with
trailing data), whatever a plain ``json.loads`` of the canonical text reads under the API's own
field names is what Go's rules (``core.gojson``, each behaviour probed against dockerd) read
from the original."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powerstrip.core.canonical import AmbiguousBody, body_shape, canonical_body, respell
from powerstrip.core.gojson import BOOL, STRING, STRSLICE, Map, Ptr, Slice, Struct, go_decode

CREATE = body_shape("POST", "/v1.41/containers/create")

MOUNT = Struct((("Type", STRING), ("Source", STRING), ("Target", STRING)))
HOST = Struct((
    ("Privileged", BOOL), ("NetworkMode", STRING), ("Binds", Slice(STRING)),
    ("CapAdd", STRSLICE), ("Mounts", Slice(MOUNT)),
))
#: The daemon's create body, as far as these tests look into it.
GO_CREATE = Struct((("Image", STRING), ("Labels", Map(STRING)), ("HostConfig", Ptr(HOST))))


def naive(text: str) -> Any:
    """What an adapter reading with Python's json, by the API's field names, sees."""
    body = json.loads(text)
    host = body.get("HostConfig")
    out: dict[str, Any] = {k: body[k] for k in ("Image", "Labels") if k in body}
    if host is not None:
        out["HostConfig"] = {k: host[k] for k in ("Privileged", "NetworkMode", "Binds", "CapAdd",
                                                  "Mounts") if k in host}
        if "Mounts" in out["HostConfig"] and out["HostConfig"]["Mounts"] is not None:
            out["HostConfig"]["Mounts"] = [
                {k: m[k] for k in ("Type", "Source", "Target") if k in m}
                for m in out["HostConfig"]["Mounts"]]
    elif "HostConfig" in body:
        out["HostConfig"] = None
    return out


def go(text: str) -> Any:
    decoded = go_decode(GO_CREATE, text)
    host = decoded.get("HostConfig")
    if host is not None and "Mounts" in host and host["Mounts"] is not None:
        host["Mounts"] = [dict(m) for m in host["Mounts"]]
    if host is not None and "Binds" in host and host["Binds"] is not None:
        host["Binds"] = list(host["Binds"])
    return decoded


def spell(name: str) -> st.SearchStrategy[str]:
    """Spellings dockerd reads as the field ``name``."""
    def respell(flags: list[bool]) -> str:
        out = [c.swapcase() if flip and c.isalpha() else c
               for c, flip in zip(name, flags, strict=True)]
        text = "".join(out)
        return text.replace("s", "\u017f", 1) if flags and flags[0] and "s" in text else text
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(respell)


def obj(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in pairs) + "}"


scalar_string = st.sampled_from(['"a"', '"/"', '"host"', '"busybox"'])
mount = st.lists(st.tuples(st.sampled_from(["Type", "Source", "Target"]).flatmap(spell),
                           scalar_string), max_size=3).map(obj)
host_field = st.one_of(
    st.tuples(spell("Privileged"), st.sampled_from(["true", "false"])),
    st.tuples(spell("NetworkMode"), scalar_string),
    st.tuples(spell("Binds"), st.lists(scalar_string, max_size=2).map(
        lambda xs: "[" + ",".join(xs) + "]")),
    st.tuples(spell("CapAdd"), st.one_of(scalar_string, st.lists(scalar_string, max_size=2).map(
        lambda xs: "[" + ",".join(xs) + "]"))),
    st.tuples(spell("Mounts"), st.lists(mount, max_size=2).map(
        lambda xs: "[" + ",".join(xs) + "]")),
)
host = st.lists(host_field, max_size=5).map(obj)
top_field = st.one_of(
    st.tuples(spell("Image"), scalar_string),
    st.tuples(spell("HostConfig"), host),
    st.tuples(st.just("Labels"), st.lists(st.tuples(st.sampled_from(["a", "A", "b"]),
                                                    scalar_string), max_size=3).map(obj)),
)
create_body = st.tuples(st.lists(top_field, max_size=5).map(obj),
                        st.sampled_from(["", " ", " {\"x\":1}", "\n[]"])).map("".join)


@settings(max_examples=600, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(create_body)
def test_a_naive_reader_of_the_canonical_body_sees_what_the_daemon_decodes(text: str) -> None:
    try:
        shown = canonical_body(CREATE, text)
    except AmbiguousBody:
        return  # refused with a 400: nothing is shown, nothing forwarded
    assert naive(shown.text) == go(text)
    # And the daemon, reading what is forwarded, decodes the same.
    assert go(shown.text) == go(text)
    # Idempotent: the canonical body is its own canonical spelling.
    again = canonical_body(CREATE, shown.text)
    assert again.text == shown.text and not again.changed


def test_a_body_already_in_the_daemons_spelling_is_unchanged_byte_for_byte() -> None:
    text = '{"Image": "busybox",  "Cmd": ["sh"], "HostConfig": {"Binds": ["/a:/b"]}}\n'
    assert canonical_body(CREATE, text).text == text
    assert not canonical_body(CREATE, text).changed


@pytest.mark.parametrize(("text", "shown"), [
    ('{"hostconfig":{"PRIVILEGED":true}}', '{"HostConfig":{"Privileged":true}}'),
    ('{"HostConfig":{"Privileged":true},"HostConfig":{}}', '{"HostConfig":{"Privileged":true}}'),
    ('{"Image":"x"} garbage', '{"Image":"x"}'),
    ('{"Cmd":"sh"}', '{"Cmd":["sh"]}'),
    ('{"Labels":{"a":"1","A":"2","a":"3"}}', '{"Labels":{"a":"3","A":"2"}}'),
    ('{"StopTimeout":1e400,"Image":"\\ud800"}', '{"StopTimeout":1e400,"Image":"\ufffd"}'),
    ('{"Image":"x","Privileged":true}', '{"Image":"x","HostConfig":{"Privileged":true}}'),
    ('{"Privileged":true,"Memory":5,"HostConfig":{"Memory":0}}', '{"HostConfig":{"Memory":5}}'),
])
def test_respellings(text: str, shown: str) -> None:
    assert canonical_body(CREATE, text).text == shown
    assert respell(CREATE, text) == shown


@pytest.mark.parametrize(("text", "why"), [
    ('{"HostConfig":{"Privileged":true,"Privileged":null}}', "then null"),
    ('{"HostConfig":{"Mounts":[{"Source":"/a"}],"Mounts":[{"Source":"/"}]}}', "array of objects"),
    ('{"Foo":{"a":1},"foo":{"b":2}}', "may read as one field"),
    ('{"Image": NaN}', "not JSON"),
    ('{"Image": ', "not JSON"),
])
def test_what_cannot_be_shown_unambiguously_is_refused(text: str, why: str) -> None:
    with pytest.raises(AmbiguousBody, match=why):
        canonical_body(CREATE, text)


def test_bodies_are_found_by_route_however_the_path_is_spelled() -> None:
    assert body_shape("POST", "/v1.41/containers/create?name=x") is CREATE
    assert body_shape("POST", "/containers/create") is CREATE
    assert body_shape("POST", "/v1.24/%63ontainers/create") is CREATE
    assert body_shape("POST", "/v1.41/services/abc/update") != "any"
    assert body_shape("POST", "/v1.41/plugins/vieux/sshfs:latest/set") is body_shape(
        "POST", "/plugins/x/set")
    assert body_shape("POST", "/v1.41/plugins/vieux/sshfs:latest/set") != "any"
    assert body_shape("POST", "/v1.41/containers/json") == "any"
    assert body_shape("GET", "/v1.41/containers/create") == "any"


def test_service_specs_fold_too() -> None:
    shape = body_shape("POST", "/v1.41/services/create")
    text = ('{"taskTemplate":{"containerspec":{"Image":"busybox",'
            '"MOUNTS":[{"Type":"bind","Source":"/","Target":"/host"}]}}}')
    shown = json.loads(canonical_body(shape, text).text)
    assert shown["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"] == "/"
