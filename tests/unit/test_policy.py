"""The policy adapter's pure parts: Go-like JSON reading, normalisation, rules and checks.

The Go behaviours modelled here were probed on dockerd 20.10.24 (Go 1.19); docs/policy.md has
the table and tests/e2e/test_policy_adapter.py replays the gaps against a real daemon.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from adapters.policy import (
    CREATE_BODY,
    EXEC_BODY,
    VOLUME_BODY,
    ClientSection,
    GoJSONError,
    ImageRef,
    ImageRefError,
    Rules,
    RulesError,
    allowed_path,
    applied_rules,
    check_build,
    check_container_update,
    check_create,
    check_endpoint,
    check_exec,
    check_image_naming,
    check_plugin,
    check_service,
    check_start,
    check_swarm,
    check_volume_create,
    clean_path,
    go_decode,
    go_fold_equal,
    host_configs,
    host_network_violation,
    image_allowed,
    load_rules,
    make_adapter,
    normalize_capability,
    parse_image_reference,
    parse_rules,
    service_networks,
)
from powerstrip.adapter import Client, Request
from powerstrip.kit.engine_api import EngineError
from powerstrip.testing import call_pre, tcp_client, tls_client, unix_client

REPO = Path(__file__).resolve().parents[2]
RULES = Rules(
    privileged=True, host_network=True, host_pid=True,
    cap_add=frozenset({"CAP_NET_BIND_SERVICE"}), bind_mounts=("/flocker", "/srv/data"),
    resolve_symlinks=False, images=(parse_image_reference("busybox"),),
)


def create(**body: object) -> str:
    return json.dumps({"Image": "busybox", **body})


def members(*parts: str) -> str:
    """A JSON object written from its members as text, so duplicate keys stay in it."""
    return "{" + ",".join(parts) + "}"


def rule(violation: object) -> str | None:
    return None if violation is None else violation.rule  # type: ignore[attr-defined]


# -- Go key folding ------------------------------------------------------------------------------


def spellings(name: str) -> st.SearchStrategy[str]:
    """Every spelling of ``name`` that Go's EqualFold matches: either case, and the KELVIN SIGN
    and LONG S for k and s."""

    def variants(c: str) -> list[str]:
        out = [c.lower(), c.upper()]
        out += {"k": ["\u212a"], "s": ["\u017f"]}.get(c.lower(), [])
        return out

    return st.tuples(*(st.sampled_from(variants(c)) for c in name)).map("".join)


@given(spellings("HostConfig"), spellings("Privileged"))
def test_any_folded_spelling_reaches_the_field(outer: str, inner: str) -> None:
    body = members('"Image":"busybox"', f'"{outer}":{{"{inner}":true}}')
    assert rule(check_create(RULES, body)) == "privileged"


@pytest.mark.parametrize("key", ["prıvileged", "Privileged ", "Privilege", "Privilegeds",
                                 "Pr\u0130vileged", "privi\u2c6dged"])
def test_near_spellings_are_other_keys(key: str) -> None:
    # U+0131 dotless i upper-cases to I in Python, but Go does not fold it to i: not the field.
    assert not go_fold_equal(key, "Privileged")
    body = members('"Image":"busybox"', f'"HostConfig":{{"{key}":true}}')
    assert check_create(RULES, body) is None


def test_exact_match_wins_over_folded_one_only_by_order() -> None:
    assert go_decode(EXEC_BODY, '{"privileged":true,"Privileged":false}') == {"Privileged": False}
    assert go_decode(EXEC_BODY, '{"Privileged":false,"PRIVILEGED":true}') == {"Privileged": True}


# -- Go decoding: duplicates merge, first value only, type errors ---------------------------------


@given(st.booleans(), st.sampled_from(["none", "bridge", "host"]))
def test_duplicate_objects_merge_field_by_field(privileged: bool, network: str) -> None:
    body = members('"Image":"busybox"', f'"HostConfig":{{"Privileged":{json.dumps(privileged)}}}',
                   f'"hostconfig":{{"NetworkMode":"{network}"}}')
    hc = go_decode(CREATE_BODY, body)["HostConfig"]
    assert hc == {"Privileged": privileged, "NetworkMode": network}


def test_null_resets_a_pointer_and_the_top_level_fields_then_count() -> None:
    body = '{"Image":"busybox","HostConfig":{"Privileged":true},"HostConfig":null}'
    decoded = go_decode(CREATE_BODY, body)
    assert decoded["HostConfig"] is None and host_configs(decoded) == []
    assert check_create(RULES, body) is None  # the daemon creates it unprivileged (probed)
    body = '{"Image":"busybox","Privileged":true,"HostConfig":null}'
    assert rule(check_create(RULES, body)) == "privileged"


def test_top_level_host_config_fields_are_checked() -> None:
    assert rule(check_create(RULES, create(Privileged=True))) == "privileged"
    assert rule(check_create(RULES, create(Binds=["/etc:/h"]))) == "bind_mounts"
    # dockerd ignores them when HostConfig is there; refusing anyway costs no real client.
    assert rule(check_create(RULES, create(Privileged=True, HostConfig={}))) == "privileged"


def test_duplicate_map_keys_merge() -> None:
    body = '{"DriverOpts":{"device":"/etc"},"driveropts":{"type":"none","o":"bind"}}'
    assert go_decode(VOLUME_BODY, body)["DriverOpts"] == {
        "device": "/etc", "type": "none", "o": "bind"}
    assert rule(check_volume_create(RULES, body)) == "bind_mounts"


def test_slice_elements_are_decoded_into_the_old_ones() -> None:
    body = ('{"Image":"busybox","HostConfig":{"Mounts":[{"Source":"/etc","Target":"/h"}]},'
            '"HostConfig":{"Mounts":[{"Type":"bind"}]}}')
    mounts = go_decode(CREATE_BODY, body)["HostConfig"]["Mounts"]
    assert list(mounts) == [{"Source": "/etc", "Target": "/h", "Type": "bind"}]
    assert rule(check_create(RULES, body)) == "bind_mounts"


def test_a_shorter_array_truncates_and_a_longer_one_brings_elements_back() -> None:
    first = '"HostConfig":{"Mounts":[{"Source":"/srv/data"},{"Source":"/etc","Target":"/h"}]}'
    short = '"HostConfig":{"Mounts":[{"Type":"bind"}]}'
    assert check_create(RULES, members('"Image":"busybox"', first, short)) is None
    longer = '"HostConfig":{"Mounts":[{"Type":"bind"},{"Type":"bind"}]}'
    found = check_create(RULES, members('"Image":"busybox"', first, short, longer))
    assert rule(found) == "bind_mounts"
    empty = '"HostConfig":{"Mounts":[]}'
    assert check_create(RULES, members('"Image":"busybox"', first, empty, longer)) is None


@given(st.lists(st.sampled_from(["/etc:/a", "/srv/data:/b", "vol:/c"]), min_size=1),
       st.lists(st.sampled_from(["/srv/data:/b", "vol:/c"])))
def test_string_slices_take_the_last_array(first: list[str], last: list[str]) -> None:
    body = members('"Image":"busybox"', f'"HostConfig":{{"Binds":{json.dumps(first)}}}',
                   f'"HostConfig":{{"Binds":{json.dumps(last)}}}')
    assert check_create(RULES, body) is None


def test_only_the_first_json_value_counts() -> None:
    body = create(HostConfig={"Privileged": True}) + " trailing garbage {"
    assert rule(check_create(RULES, body)) == "privileged"


@pytest.mark.parametrize("body", [
    '{"Image":"busybox","HostConfig":{"Privileged":"true"}}',
    '{"Image":"busybox","HostConfig":{"Privileged":1}}',
    '{"Image":"busybox","HostConfig":{"Privileged":NaN}}',
    '{"Image":"busybox","HostConfig":{"Privileged":true,}}',
    '{"Image":"busybox","HostConfig":[]}',
    "", "   ", "[]", '"x"',
])
def test_bodies_the_daemon_rejects_are_refused(body: str) -> None:
    assert rule(check_create(RULES, body)) == "body"


def test_strslice_takes_a_string_or_an_array() -> None:
    assert go_decode(CREATE_BODY, '{"CapAdd":"SYS_ADMIN"}')["CapAdd"] == ["SYS_ADMIN"]
    assert go_decode(CREATE_BODY, '{"CapAdd":["A",null]}')["CapAdd"] == ["A", ""]
    with pytest.raises(GoJSONError):
        go_decode(CREATE_BODY, '{"CapAdd":1}')


def test_lone_surrogates_read_as_replacement_characters() -> None:
    assert go_decode(CREATE_BODY, '{"Image":"a\\ud800"}')["Image"] == "a\ufffd"


# -- rules in create, start, exec, volumes --------------------------------------------------------


def test_a_body_the_policy_cannot_see_is_refused() -> None:
    assert rule(check_create(RULES, None)) == "body"
    assert rule(check_exec(RULES, None)) == "body"
    assert rule(check_volume_create(RULES, None)) == "body"


@pytest.mark.parametrize(("hc", "expected"), [
    ({"NetworkMode": "host"}, "host_network"),
    ({"NetworkMode": "HOST"}, "host_network"),
    ({"NetworkMode": "bridge"}, None),
    ({"NetworkMode": "container:abc"}, None),
    ({"PidMode": "host"}, "host_pid"),
    ({"PidMode": "Host"}, "host_pid"),
    ({"PidMode": "container:abc"}, None),
    ({"CapAdd": ["sys_admin"]}, "cap_add"),
    ({"CapAdd": ["CAP_SYS_ADMIN"]}, "cap_add"),
    ({"CapAdd": ["\u017fys_admin"]}, "cap_add"),
    ({"CapAdd": ["all"]}, "cap_add"),
    ({"CapAdd": ["net_bind_service", "cap_NET_BIND_SERVICE"]}, None),
    ({"Binds": ["/flocker/../etc:/h"]}, "bind_mounts"),
    ({"Binds": ["//etc:/h"]}, "bind_mounts"),
    ({"Binds": ["/etc/:/h:ro"]}, "bind_mounts"),
    ({"Binds": ["/flockerx:/h"]}, "bind_mounts"),
    ({"Binds": ["/flocker/a/:/h", "/srv/data:/d:ro", "etc:/v", "/anon"]}, None),
    ({"Mounts": [{"Type": "bind", "Source": "/srv/data/../../etc", "Target": "/h"}]},
     "bind_mounts"),
    ({"Mounts": [{"Type": "volume", "Target": "/h", "VolumeOptions": {"DriverConfig": {
        "Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]}, "bind_mounts"),
    ({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/h", "VolumeOptions": {
        "DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/flocker/v"}}}}]},
     None),
    ({"Mounts": [{"Type": "tmpfs", "Target": "/t"}]}, None),
    ({"Privileged": False}, None),
])
def test_host_config_rules(hc: dict[str, object], expected: str | None) -> None:
    assert rule(check_create(RULES, create(HostConfig=hc))) == expected


def test_start_before_1_24_is_judged_like_a_create() -> None:
    assert rule(check_start(RULES, "/v1.23/containers/c/start", '{"Privileged":true}')) == (
        "privileged")
    body = '{"HostConfig":{"PidMode":"host"}}'
    assert rule(check_start(RULES, "/v1.23/containers/c/start", body)) == "host_pid"
    # No body (the proxy shows every JSON body): nothing to judge, whatever the version.
    assert check_start(RULES, "/v1.23/containers/c/start", None) is None
    assert check_start(RULES, "/v1.41/containers/c/start", None) is None
    assert check_start(RULES, "/containers/c/start", None) is None
    assert check_start(RULES, "/v1.23/containers/c/start", "{}") is None


def test_exec() -> None:
    assert rule(check_exec(RULES, '{"Cmd":["sh"],"PRIVILEGED":true}')) == "privileged"
    assert check_exec(RULES, '{"Cmd":["sh"]}') is None
    assert check_exec(Rules(), None) is None


def test_volume_devices() -> None:
    assert check_volume_create(RULES, '{"Name":"v"}') is None
    assert check_volume_create(RULES, '{"DriverOpts":{"type":"tmpfs","device":"tmpfs"}}') is None
    nfs = '{"DriverOpts":{"type":"nfs","o":"addr=10.0.0.1","device":":/export"}}'
    assert check_volume_create(RULES, nfs) is None
    # A relative device is resolved against dockerd's working directory: not checkable.
    for device in ("../../etc", "etc", "./flocker/x"):
        body = json.dumps({"DriverOpts": {"type": "none", "o": "bind", "device": device}})
        assert rule(check_volume_create(RULES, body)) == "bind_mounts"
    body = '{"DriverOpts":{"type":"nfs","o":"addr=1.2.3.4","device":":/export"}}'
    assert check_volume_create(RULES, body) is None
    body = '{"DriverOpts":{"type":"ext4","device":"/dev/sda1"}}'
    assert rule(check_volume_create(RULES, body)) == "bind_mounts"


# -- paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "clean"), [
    ("/etc", "/etc"), ("//etc", "/etc"), ("/etc/", "/etc"), ("/a/../etc", "/etc"),
    ("/../../etc", "/etc"), ("/etc/./x/", "/etc/x"), ("/", "/"), ("///", "/"),
])
def test_clean_path(path: str, clean: str) -> None:
    assert clean_path(path) == clean


@given(st.lists(st.sampled_from(["a", "..", ".", "", "etc", "flocker"]), max_size=8))
def test_cleaning_is_idempotent_and_escapes_only_by_text(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    cleaned = clean_path(path)
    assert clean_path(cleaned) == cleaned
    assert "/../" not in cleaned + "/" and "//" not in cleaned[1:]
    if allowed_path(path, ["/flocker"], resolve=False):
        assert cleaned == "/flocker" or cleaned.startswith("/flocker/")


def test_symlinks_are_followed(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "link").symlink_to("/etc")
    allowed = [str(tmp_path / "allowed")]
    assert allowed_path(str(tmp_path / "allowed" / "link"), allowed, resolve=False)
    assert not allowed_path(str(tmp_path / "allowed" / "link"), allowed)
    assert allowed_path(str(tmp_path / "allowed" / "x"), allowed)


# -- capabilities and images ---------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "normal"), [
    ("sys_admin", "CAP_SYS_ADMIN"), ("CAP_SYS_ADMIN", "CAP_SYS_ADMIN"),
    ("cap_sys_admin", "CAP_SYS_ADMIN"), ("\u017fys_admin", "CAP_SYS_ADMIN"),
    ("all", "ALL"), ("ALL", "ALL"),
])
def test_normalize_capability(cap: str, normal: str) -> None:
    assert normalize_capability(cap) == normal


@pytest.mark.parametrize(("ref", "normal"), [
    ("busybox", "docker.io/library/busybox"),
    ("busybox:latest", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox", "docker.io/library/busybox"),
    ("library/busybox:latest", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox"),
    ("localhost/busybox", "localhost/busybox"),
    ("localhost:5000/a/b:1.0", "localhost:5000/a/b:1.0"),
    ("quay.io/org/img@sha256:" + "a" * 64, "quay.io/org/img@sha256:" + "a" * 64),
    ("myorg/busybox", "docker.io/myorg/busybox"),
    ("docker.io/library/cafe", "docker.io/library/cafe"),
])
def test_image_references_normalise(ref: str, normal: str) -> None:
    assert str(parse_image_reference(ref)) == normal


@pytest.mark.parametrize("ref", [
    "64e93288725a", "64e", "a" * 64, "sha256:" + "a" * 64, "sha256:64e", "cafe",
    "BUSYBOX", "Busybox", " busybox", "busybox ", "busybox@sha256:zz", "busybox:", "",
    "busybox:" + "x" * 129, "a//b", "-a",
])
def test_ids_and_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(ImageRefError):
        parse_image_reference(ref)


@given(st.sampled_from(["busybox", "library/busybox", "docker.io/busybox",
                        "docker.io/library/busybox", "index.docker.io/library/busybox"]),
       st.sampled_from(["", ":latest", ":1.36", "@sha256:" + "b" * 64]))
def test_every_spelling_of_an_allowed_repository_is_allowed(name: str, suffix: str) -> None:
    assert check_create(RULES, create(Image=name + suffix)) is None


def test_tag_and_digest_entries() -> None:
    tagged = [parse_image_reference("alpine:3.19")]
    assert image_allowed(parse_image_reference("alpine:3.19"), tagged)
    assert not image_allowed(parse_image_reference("alpine"), tagged)
    assert not image_allowed(parse_image_reference("alpine:3.20"), tagged)
    digest = "sha256:" + "c" * 64
    pinned = [parse_image_reference(f"alpine@{digest}")]
    assert image_allowed(parse_image_reference(f"docker.io/library/alpine@{digest}"), pinned)
    assert not image_allowed(parse_image_reference("alpine:3.19"), pinned)
    assert not image_allowed(ImageRef("docker.io/library/busybox"), tagged)


def test_images_outside_the_allowlist() -> None:
    assert rule(check_create(RULES, create(Image="evil"))) == "images"
    assert rule(check_create(RULES, create(Image="64e93288725a"))) == "images"
    assert rule(check_create(RULES, '{"Image":"busybox","image":"evil"}')) == "images"
    assert check_create(RULES, '{"Image":"evil","IMAGE":"busybox"}') is None
    assert rule(check_create(RULES, "{}")) == "images"


def test_naming_an_allowlisted_image_is_refused() -> None:
    assert rule(check_image_naming(RULES, "tag", "/v1.41/images/evil/tag?repo=busybox")) == (
        "images")
    assert rule(check_image_naming(RULES, "tag", "/images/e/tag?repo=docker.io/busybox&tag=x")) \
        == "images"
    assert check_image_naming(RULES, "tag", "/images/e/tag?repo=mine&tag=latest") is None
    assert rule(check_image_naming(RULES, "commit", "/commit?container=c&repo=busybox")) == (
        "images")
    assert rule(check_image_naming(RULES, "import", "/images/create?fromSrc=-&repo=busybox")) == (
        "images")
    assert check_image_naming(RULES, "import", "/images/create?fromImage=busybox&tag=1") is None
    assert rule(check_image_naming(RULES, "load", "/images/load")) == "images"
    assert check_image_naming(Rules(), "load", "/images/load") is None


@pytest.mark.parametrize("query", [
    # dockerd drops repo's own tag or digest and applies the tag parameter to the rest.
    "repo=busybox:x&tag=latest",
    "repo=busybox@sha256:" + "a" * 64 + "&tag=latest",
    "repo=docker.io/library/busybox:1&tag=2",
    # A repo this reader cannot parse is refused rather than trusted to fail at the daemon.
    "repo=busybox::x&tag=latest",
])
@pytest.mark.parametrize("kind", ["tag", "commit", "import"])
def test_naming_reads_the_repository_as_the_daemon_does(kind: str, query: str) -> None:
    target = {"tag": "/v1.41/images/evil/tag?", "commit": "/v1.41/commit?container=c&",
              "import": "/v1.41/images/create?fromSrc=-&"}[kind] + query
    assert rule(check_image_naming(RULES, kind, target)) == "images"
    assert rule(check_build(RULES, "/build?t=mine&t=busybox:x")) == "images"
    assert rule(check_build(RULES, "/build?networkmode=host")) == "host_network"
    assert check_build(RULES, "/build?t=mine&networkmode=default") is None


# -- the rules file -------------------------------------------------------------------------------


def test_the_example_rules_load() -> None:
    rules = load_rules(REPO / "adapters" / "policy.yml")
    assert rules.privileged and rules.host_network and rules.host_pid
    assert rules.images and rules.bind_mounts and rules.cap_add is not None


@pytest.mark.parametrize(("text", "message"), [
    ("rules: {privileged: forbid, privileged: allow}", "duplicate key 'privileged'"),
    ("rules: {privilegd: forbid}", "unknown rule 'privilegd'"),
    ("rules: {privileged: yes}", "rule privileged is 'forbid' or 'allow'"),
    ("rules: {bind_mounts: {allow: [tmp]}}", "'tmp' is not absolute"),
    ("rules: {bind_mounts: [/tmp]}", "rule bind_mounts needs {allow: [...]}"),
    ("rules: {images: {allow: [64e93288725a]}}", "may be an image ID"),
    ("rules: {images: {allow: busybox}}", "images.allow must be a list"),
    ("rules: {images: {allow: [busybox], deny: []}}", "unknown setting 'deny'"),
    ("version: 2\nrules: {}", "version must be 1"),
    ("rule: {}", "unknown key 'rule'"),
    ("rules: [", "policy.yml:1: YAML syntax error"),
    ("rules: {1: forbid}", "keys must be strings, got the number 1; quote it"),
    ("- a", "a rules file is a mapping"),
])
def test_rules_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(RulesError, match="policy.yml") as caught:
        parse_rules(text, "policy.yml")
    assert message in str(caught.value)


def test_rules_errors_name_the_line() -> None:
    with pytest.raises(RulesError, match=r"policy.yml:3: unknown rule 'host_ipc'"):
        parse_rules("version: 1\nrules:\n  host_ipc: forbid\n", "policy.yml")


def test_a_duplicate_key_names_both_lines_as_the_adapters_file_does() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules("rules:\n  privileged: forbid\n  host_pid: forbid\n  privileged: allow\n",
                    "policy.yml")
    assert str(caught.value) == (
        "policy.yml:4: duplicate key 'privileged': it is also on line 2; "
        "YAML would silently keep only the last one"
    )


def test_merged_rules_count_and_keep_their_lines() -> None:
    text = "rules:\n  <<: {privileged: forbid}\n  host_pid: forbid\n  host_ipc: forbid\n"
    with pytest.raises(RulesError, match=r"policy.yml:4: unknown rule 'host_ipc'"):
        parse_rules(text, "policy.yml")
    rules = parse_rules(text.replace("  host_ipc: forbid\n", ""), "policy.yml")
    assert rules.privileged and rules.host_pid
    assert rules.sources == {"privileged": "policy.yml:2", "host_pid": "policy.yml:3"}


def test_cap_add_forbid_refuses_every_addition() -> None:
    rules = parse_rules("rules: {cap_add: forbid}")
    assert rule(check_create(rules, create(HostConfig={"CapAdd": ["NET_BIND_SERVICE"]}))) == (
        "cap_add")
    assert check_create(rules, create(HostConfig={"CapAdd": []})) is None


# -- the hooks, through the SDK -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "target", "body", "refused"), [
    ("POST", "/v1.41/containers/create", create(HostConfig={"Privileged": True}), "privileged"),
    ("POST", "/v1.41%2Fcontainers%2Fcreate", create(Privileged=True), "privileged"),
    ("POST", "/containers/create?name=x", create(), None),
    ("POST", "/v1.23/containers/c/start", '{"PidMode":"host"}', "host_pid"),
    ("POST", "/v1.41/containers/c/exec", '{"Privileged":true}', "privileged"),
    ("POST", "/volumes/create", '{"DriverOpts":{"device":"/etc","o":"bind"}}', "bind_mounts"),
    ("POST", "/v1.41/images/x/tag?repo=busybox", None, "images"),
    ("POST", "/v1.41/build?networkmode=host", None, "host_network"),
    ("GET", "/v1.41/containers/json", None, None),
])
def test_hooks(method: str, target: str, body: str | None, refused: str | None) -> None:
    app = make_adapter(RULES)
    payload = json.dumps({"PowerstripProtocolVersion": 1, "Type": "pre-hook",
                          "ClientRequest": {"Method": method, "Request": target, "Body": body}})
    results: list[tuple[int, bytes]] = []
    app.handle(payload.encode()).addCallback(results.append)
    status, answer = results[0]
    if refused is None:
        assert status == 200
        assert json.loads(answer)["ModifiedClientRequest"]["Body"] == body
    else:
        assert status == 403
        assert json.loads(answer)["message"].startswith(f"refused by policy rule {refused}: ")
    assert app.matching("pre-hook", Request(method, target, body)) or refused is None


# -- Swarm, plugins, docker update and the endpoints allowlist ------------------------------------


def service(**task: object) -> str:
    """A service spec whose TaskTemplate holds ``task`` over a busybox ContainerSpec."""
    template: dict[str, object] = {"ContainerSpec": {"Image": "busybox"}}
    template.update(task)
    return json.dumps({"Name": "s", "TaskTemplate": template})


def container_spec(**spec: object) -> str:
    return service(ContainerSpec={"Image": "busybox", **spec})


@pytest.mark.parametrize(("body", "refused"), [
    (service(), None),
    (container_spec(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]), "bind_mounts"),
    (container_spec(Mounts=[{"Type": "bind", "Source": "/flocker/../etc", "Target": "/h"}]),
     "bind_mounts"),
    (container_spec(Mounts=[{"Type": "bind", "Source": "/flocker/db", "Target": "/h"}]), None),
    (container_spec(Mounts=[{"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": {
        "DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]),
     "bind_mounts"),
    (container_spec(CapabilityAdd=["CAP_SYS_ADMIN"]), "cap_add"),
    (container_spec(capabilityadd=["ſys_admin"]), "cap_add"),
    (container_spec(CapabilityAdd=["NET_BIND_SERVICE"]), None),
    (container_spec(Image="alpine"), "images"),
    (container_spec(Image="busybox:latest@sha256:" + "a" * 64), None),
    (json.dumps({"TaskTemplate": {}}), "images"),
    (service(Networks=[{"Target": "host"}]), "host_network"),
    (service(Networks=[{"Target": "HOST"}]), "host_network"),
    (json.dumps({"TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                 "Networks": [{"Target": "host"}]}), "host_network"),
    (service(Networks=[{"Target": "backend"}]), None),
    (service(Runtime="plugin", PluginSpec={"Name": "p", "Remote": "vieux/sshfs"}), "plugins"),
    (service(PluginSpec={}), "plugins"),
    (service(PluginSpec=None), None),
    (members('"TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}',
             '"tasktemplate":{"containerspec":{"mounts":[{"source":"/etc","target":"/h"}]}}'),
     "bind_mounts"),
    (None, "body"),
    ('{"TaskTemplate":{"ContainerSpec":{"CapabilityAdd":"SYS_ADMIN"}}}', "body"),
])
def test_services_are_judged_as_their_containers_would_be(
    body: str | None, refused: str | None
) -> None:
    assert rule(check_service(RULES, body)) == refused


def test_services_with_nothing_forbidden_pass() -> None:
    body = container_spec(Image="anything", CapabilityAdd=["ALL"], Mounts=[
        {"Type": "bind", "Source": "/", "Target": "/host"}])
    assert check_service(Rules(plugins=False), body) is None
    assert check_service(Rules(), service(Runtime="plugin", PluginSpec={})) is not None
    assert check_service(Rules(plugins=False), service(Runtime="plugin", ContainerSpec=None,
                                                       PluginSpec={})) is None


def test_service_networks_other_than_host_need_a_look_up() -> None:
    body = json.dumps({"TaskTemplate": {"Networks": [{"Target": "host"}, {"Target": "abc123"}]},
                       "Networks": [{"Target": "front"}, None]})
    assert service_networks(body) == [("TaskTemplate.Networks", "abc123"), ("Networks", "front"),
                                      ("Networks", "")]
    assert service_networks(None) == []


class FakeEngine:
    """Answers ``GET /networks/{target}`` from a table; anything else is a 404."""

    def __init__(self, networks: dict[str, dict[str, str]]) -> None:
        self.networks = networks
        self.asked: list[str] = []

    def request(self, method: str, path: str) -> defer.Deferred[Any]:
        self.asked.append(f"{method} {path}")
        target = path.removeprefix("/networks/")
        if target in self.networks:
            return defer.succeed(self.networks[target])
        return defer.fail(EngineError(404, f"network {target} not found"))


def run_now(coroutine: Any) -> Any:
    results: list[Any] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    return results[0]


def test_a_network_id_is_looked_up() -> None:
    engine = FakeEngine({"9f3c": {"Name": "host", "Driver": "host"},
                         "ab12": {"Name": "backend", "Driver": "overlay"}})
    found = run_now(host_network_violation(RULES, engine, "TaskTemplate.Networks", "9f3c"))
    assert rule(found) == "host_network"
    assert run_now(host_network_violation(RULES, engine, "Networks", "ab12")) is None
    assert rule(run_now(host_network_violation(RULES, engine, "Networks", "gone"))) == (
        "host_network")
    assert engine.asked == ["GET /networks/9f3c", "GET /networks/ab12", "GET /networks/gone"]
    assert run_now(host_network_violation(Rules(), engine, "Networks", "9f3c")) is None
    # Without an engine to ask, an ID cannot be judged: refused.
    assert "--docker" in run_now(host_network_violation(RULES, None, "Networks", "ab12")).why


def test_service_hooks_look_networks_up() -> None:
    engine = FakeEngine({"9f3c": {"Name": "host", "Driver": "host"},
                         "ab12": {"Name": "backend", "Driver": "overlay"}})
    app = make_adapter(RULES, engine=engine)
    refused = call_pre(app, "POST", "/v1.41/services/create",
                       service(Networks=[{"Target": "ab12"}, {"Target": "9f3c"}]))
    assert refused.status == 403 and "rule host_network" in refused.message
    passed = call_pre(app, "POST", "/v1.41/services/x/update?version=3",
                      service(Networks=[{"Target": "ab12"}]))
    assert passed.status == 200


def test_swarm_and_plugins_are_forbidden_unless_allowed() -> None:
    assert Rules().swarm and Rules().plugins
    assert rule(check_swarm(Rules(), "init")) == "swarm"
    assert rule(check_swarm(Rules(), "join")) == "swarm"
    assert rule(check_plugin(Rules(), "pull")) == "plugins"
    allowed = parse_rules("rules: {swarm: allow, plugins: allow}")
    assert check_swarm(allowed, "join") is None and check_plugin(allowed, "enable") is None
    forbidden = parse_rules("rules: {swarm: forbid, plugins: forbid}")
    assert forbidden.swarm and forbidden.plugins


@pytest.mark.parametrize(("body", "refused"), [
    ('{"Memory":67108864,"RestartPolicy":{"Name":"always"}}', None),
    ('{"Privileged":true}', "privileged"),
    ('{"HostConfig":{"CapAdd":["SYS_ADMIN"]}}', "cap_add"),
    ('{"Binds":["/:/host"]}', "bind_mounts"),
    (None, "body"),
])
def test_container_update(body: str | None, refused: str | None) -> None:
    assert rule(check_container_update(RULES, body)) == refused


ENDPOINT_RULES = parse_rules(
    'rules: {endpoints: {allow: ["GET /containers/json", "POST /containers/*/start", '
    '"HEAD /_ping", "POST /*/images/create"]}}')


@pytest.mark.parametrize(("method", "target", "refused"), [
    ("GET", "/v1.41/containers/json?all=1", None),
    ("GET", "/containers/json", None),
    ("GET", "/v01.41.0%2F%63ontainers/json", None),
    ("POST", "/v1.41/containers/abc/start", None),
    ("HEAD", "/_ping", None),
    ("HEAD", "/v1.41/_ping", None),
    ("POST", "/images/create?fromImage=busybox", None),
    ("GET", "/_ping", "endpoints"),
    ("POST", "/v1.41/containers/create", "endpoints"),
    ("POST", "/v1.41/swarm/init", "endpoints"),
    ("POST", "/v1.41%2Fswarm%2Finit", "endpoints"),
    ("get", "/v1.41/containers/json", "endpoints"),
    ("GET", "/v1.41//containers/json", None),  # dockerd only redirects it
    ("GET", "/v1.41/containers/%zz", "endpoints"),
])
def test_the_endpoints_allowlist(method: str, target: str, refused: str | None) -> None:
    assert rule(check_endpoint(ENDPOINT_RULES, method, target)) == refused
    assert check_endpoint(Rules(), method, target) is None


@pytest.mark.parametrize(("text", "message"), [
    ('rules: {endpoints: {allow: ["get /x"]}}', "methods are written in capitals"),
    ('rules: {endpoints: {allow: ["GET x"]}}', "must start with '/'"),
    ('rules: {endpoints: {allow: "GET /x"}}', "endpoints.allow must be a list"),
    ("rules: {swarm: yes}", "rule swarm is 'forbid' or 'allow'"),
])
def test_endpoint_rule_errors(text: str, message: str) -> None:
    with pytest.raises(RulesError, match="policy.yml") as caught:
        parse_rules(text, "policy.yml")
    assert message in str(caught.value)


SHIPPED = load_rules(REPO / "adapters" / "policy.yml")


@pytest.mark.parametrize(("method", "target"), [
    ("HEAD", "/_ping"), ("GET", "/v1.41/version"), ("POST", "/v1.41/containers/create?name=x"),
    ("POST", "/v1.41/containers/x/attach?stream=1&stdout=1"), ("POST", "/v1.41/containers/x/wait"),
    ("DELETE", "/v1.41/containers/x?v=1"), ("PUT", "/v1.41/containers/x/archive?path=/"),
    ("POST", "/v1.41/exec/e/start"), ("POST", "/v1.41/build?t=x"), ("POST", "/session"),
    ("GET", "/v1.41/images/get?names=busybox"), ("POST", "/v1.41/networks/n/connect"),
    ("GET", "/v1.41/volumes/v"), ("GET", "/v1.41/plugins"),
])
def test_the_shipped_allowlist_lets_the_cli_work(method: str, target: str) -> None:
    assert check_endpoint(SHIPPED, method, target) is None


@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/v1.41/swarm/init"), ("POST", "/v1.41/swarm/join"), ("GET", "/v1.41/swarm"),
    ("POST", "/v1.41/services/create"), ("POST", "/v1.41/services/s/update"),
    ("GET", "/v1.41/secrets"), ("POST", "/v1.41/configs/create"), ("POST", "/v1.41/nodes/n/update"),
    ("POST", "/v1.41/plugins/pull"), ("POST", "/v1.41/plugins/p/enable"),
    ("GET", "/v1.41/plugins/privileges"), ("PUT", "/v1.42/volumes/v"),
    ("GET", "/v1.41/containers/x/checkpoints"), ("POST", "/grpc"),
])
def test_the_shipped_allowlist_leaves_out_swarm_and_plugins(method: str, target: str) -> None:
    assert rule(check_endpoint(SHIPPED, method, target)) == "endpoints"


@pytest.mark.parametrize(("method", "target", "refused"), [
    ("POST", "/v1.41/swarm/init", "swarm"),
    ("POST", "/swarm/join", "swarm"),
    ("GET", "/v1.41/plugins/privileges?remote=x", "plugins"),
    ("POST", "/v1.41/plugins/pull?remote=x", "plugins"),
    ("POST", "/v1.41/plugins/create?name=x", "plugins"),
    ("POST", "/v1.41/plugins/vieux/sshfs:latest/enable", "plugins"),
    ("POST", "/v1.41/plugins/p/set", "plugins"),
    ("POST", "/v1.41/plugins/p/upgrade?remote=x", "plugins"),
    ("POST", "/v1.41/plugins/p/disable", None),
    ("POST", "/v1.41/swarm/leave", None),
])
def test_swarm_and_plugin_hooks(method: str, target: str, refused: str | None) -> None:
    result = call_pre(make_adapter(RULES), method, target, None)
    if refused is None:
        assert result.status == 200
    else:
        assert result.status == 403
        assert result.message.startswith(f"refused by policy rule {refused}: ")


def test_the_endpoints_rule_runs_first_on_every_request() -> None:
    rules = Rules(endpoints=ENDPOINT_RULES.endpoints)
    result = call_pre(make_adapter(rules), "POST", "/v1.41/swarm/init", "{}")
    assert result.status == 403 and "rule endpoints" in result.message
    assert call_pre(make_adapter(rules), "HEAD", "/_ping", None).status == 200


# -- rules per client ------------------------------------------------------------------------------

CI = unix_client("ci", uid=990, groups=["ci"])
OPS = unix_client("ops", uid=991, groups=["ops", "wheel"])
EVE = unix_client("eve", uid=992, groups=["eve"])


def bind(path: str) -> str:
    return create(HostConfig={"Binds": [f"{path}:/x"]})


PRIVILEGED = create(HostConfig={"Privileged": True})


def pre(client: Client | None, body: str, rules: Rules = SHIPPED) -> tuple[int, str | None]:
    """A create judged by the policy for ``client`` (None: a protocol 1 call)."""
    call = {"protocol": 1} if client is None else {"client": client}
    result = call_pre(make_adapter(rules), "POST", "/v1.41/containers/create", body, **call)
    return result.status, result.message


def test_the_shipped_sections_give_ci_its_binds_and_ops_privileges() -> None:
    assert [(s.kind, s.name) for s in SHIPPED.clients] == [("user", "ci"), ("user", "ops")]
    assert pre(CI, bind("/srv/ci")) == (200, None)
    assert pre(CI, bind("/srv/ci/cache")) == (200, None)
    assert pre(OPS, PRIVILEGED) == (200, None)


@pytest.mark.parametrize(("client", "body", "rule_name", "section"), [
    # ci's allowlist is exactly [/srv/ci]: the default's /flocker is gone, not merged in.
    (CI, bind("/flocker"), "bind_mounts", "the clients section for user ci (policy.yml:"),
    (CI, PRIVILEGED, "privileged", "the clients section for user ci (policy.yml:"),
    (OPS, bind("/srv/ci"), "bind_mounts", "the clients section for user ops (policy.yml:"),
    (EVE, bind("/srv/ci"), "bind_mounts", "the default rules (policy.yml:3)"),
    (EVE, PRIVILEGED, "privileged", "the default rules (policy.yml:3)"),
])
def test_each_client_is_refused_by_its_own_rules_and_told_whose_they_are(
    client: Client, body: str, rule_name: str, section: str
) -> None:
    status, message = pre(client, body)
    assert status == 403
    assert message is not None
    assert message.startswith(f"refused by policy rule {rule_name}: ")
    assert f"; rules for {client.describe()}: {section}" in message


def test_a_section_replaces_only_the_rules_it_sets() -> None:
    ci = SHIPPED.clients[0].rules
    assert ci.bind_mounts == ("/srv/ci",)
    assert ci.privileged and ci.images == SHIPPED.images and ci.endpoints == SHIPPED.endpoints
    assert ci.sources["bind_mounts"] != SHIPPED.sources["bind_mounts"]
    assert ci.sources["images"] == SHIPPED.sources["images"]
    assert not SHIPPED.clients[1].rules.privileged
    assert SHIPPED.clients[1].rules.bind_mounts == SHIPPED.bind_mounts
    # The rest of the default rules hold for both: ci may not add SYS_ADMIN.
    status, message = pre(CI, create(HostConfig={"CapAdd": ["SYS_ADMIN"], "Binds": []}))
    assert status == 403 and message and "rule cap_add" in message


def test_replacing_bind_mounts_replaces_resolve_symlinks_too() -> None:
    rules = parse_rules("rules:\n  bind_mounts: {allow: [/a], resolve_symlinks: false}\n"
                        "clients:\n  - user: ci\n    rules: {bind_mounts: {allow: [/b]}}\n")
    assert not rules.resolve_symlinks
    assert rules.clients[0].rules.resolve_symlinks  # the section's setting, whole: the default


@pytest.mark.parametrize("client", [
    None,  # a protocol 1 call: the policy mapped without "protocol: 2"
    tcp_client(),  # a plain TCP listener names nobody
    tls_client(),  # TLS without a client certificate
    tls_client(subject="O=ci"),  # a certificate without a common name
    unix_client(None, uid=4321, groups=["ci"]),  # a uid no user name resolves to
    tls_client("ci"),  # a user section does not name a certificate
    Client("unix", "/run/powerstrip.sock"),  # credentials unknown
])
def test_a_client_nobody_can_name_gets_the_default_rules(client: Client | None) -> None:
    applied = applied_rules(SHIPPED, client)
    assert applied.section is None and applied.rules is SHIPPED
    assert pre(client, bind("/srv/ci"))[0] == 403
    status, message = pre(client, PRIVILEGED)
    assert status == 403 and message is not None
    assert message.endswith(": the default rules (policy.yml:3)")
    if client is None:
        assert "; rules for an unknown client (a protocol 1 call): " in message
    else:
        assert f"; rules for {client.describe()}: " in message


def test_a_protocol_1_call_is_judged_by_the_default_rules() -> None:
    assert pre(None, bind("/flocker")) == (200, None)  # the default allows /flocker
    assert pre(None, bind("/srv/ci"))[0] == 403


GROUPS = """\
rules:
  privileged: forbid
  bind_mounts: {allow: [/data]}
clients:
  - common_name: deploy.example.com
    rules: {privileged: allow}
  - user: alice
    rules: {bind_mounts: {allow: [/home/alice]}}
  - group: wheel
    rules: {bind_mounts: {allow: [/]}}
  - group: builders
    rules: {privileged: allow}
"""


@pytest.mark.parametrize(("client", "section"), [
    (tls_client("deploy.example.com", sans=["deploy.example.com"]), 0),
    (unix_client("alice", groups=["alice", "wheel"]), 1),  # user alice comes before wheel
    (unix_client("bob", groups=["bob", "wheel", "builders"]), 2),  # wheel before builders
    (unix_client("carol", groups=["builders", "staff"]), 3),  # her primary group
    (unix_client("wheel", groups=["dave"]), None),  # a user section is not a group section
    (tls_client("alice"), None),
    (tls_client("other", sans=["deploy.example.com"]), None),  # the CN, not a SAN
    (unix_client("deploy.example.com"), None),
])
def test_sections_name_users_groups_and_common_names_and_the_first_wins(
    client: Client, section: int | None
) -> None:
    rules = parse_rules(GROUPS, "policy.yml")
    applied = applied_rules(rules, client)
    expected = None if section is None else rules.clients[section]
    assert applied.section is expected, applied.describe()


def test_group_and_common_name_sections_through_the_adapter() -> None:
    rules = parse_rules(GROUPS, "policy.yml")
    deploy = tls_client("deploy.example.com")
    assert pre(deploy, PRIVILEGED, rules) == (200, None)
    status, message = pre(deploy, bind("/etc"), rules)
    assert status == 403 and message is not None
    assert message.endswith("; rules for tls client CN=deploy.example.com (127.0.0.1:53422): "
                            "the clients section for common name deploy.example.com "
                            "(policy.yml:5)")
    bob = unix_client("bob", uid=1002, groups=["bob", "wheel"])
    assert pre(bob, bind("/etc"), rules) == (200, None)
    status, message = pre(bob, PRIVILEGED, rules)
    assert status == 403 and message is not None
    assert message.endswith("; rules for unix user bob (uid 1002): the clients section for "
                            "group wheel (policy.yml:9)")


def test_every_hook_judges_by_the_clients_rules() -> None:
    rules = parse_rules("rules: {swarm: forbid, endpoints: {allow: ['POST /swarm/init']}}\n"
                        "clients:\n  - user: ops\n    rules: {swarm: allow}\n")
    app = make_adapter(rules)
    assert call_pre(app, "POST", "/v1.41/swarm/init", "{}", client=OPS).status == 200
    refused = call_pre(app, "POST", "/v1.41/swarm/init", "{}", client=EVE)
    assert refused.status == 403 and "rule swarm" in (refused.message or "")
    refused = call_pre(app, "GET", "/v1.41/info", None, client=OPS)
    assert refused.status == 403 and "the clients section for user ops" in (refused.message or "")
    assert call_pre(app, "POST", "/v1.41/containers/c/exec", '{"Privileged":true}',
                    client=OPS).status == 403


def test_services_are_judged_by_the_clients_rules_with_the_engine_asked() -> None:
    rules = parse_rules("rules: {host_network: forbid}\n"
                        "clients:\n  - group: ops\n    rules: {host_network: allow}\n")
    asked: list[str] = []

    class Engine:
        def request(self, method: str, path: str) -> defer.Deferred[Any]:
            asked.append(path)
            return defer.succeed({"Name": "host", "Driver": "host"})

    app = make_adapter(rules, engine=Engine())
    body = service(Networks=[{"Target": "abc123"}])
    assert call_pre(app, "POST", "/v1.41/services/create", body, client=OPS).status == 200
    refused = call_pre(app, "POST", "/v1.41/services/create", body, client=EVE)
    assert refused.status == 403
    assert "rule host_network" in (refused.message or "") and asked == ["/networks/abc123"]


@pytest.mark.parametrize(("text", "message"), [
    ("rules: {}\nclients: {user: ci}\n", "policy.yml:2: 'clients' must be a list"),
    ("rules: {}\nclients:\n  - ci\n", "policy.yml:2: clients entry 1 must be a mapping"),
    ("rules: {}\nclients:\n  - {}\n", "policy.yml:2: clients entry 1 must be a mapping"),
    ("rules: {}\nclients:\n  - rules: {privileged: allow}\n",
     "policy.yml:3: clients entry 1 names nobody: give one of user, group, common_name"),
    ("rules: {}\nclients:\n  - user: ci\n    group: ci\n    rules: {}\n",
     "policy.yml:4: clients entry 1 names both user and group"),
    ("rules: {}\nclients:\n  - user: ci\n    uid: 990\n    rules: {}\n",
     "policy.yml:4: unknown key 'uid' in clients entry 1"),
    ("rules: {}\nclients:\n  - user: ci\n", "policy.yml:3: clients entry 1 (user ci) has no"),
    ("rules: {}\nclients:\n  - user: 990\n    rules: {}\n",
     "policy.yml:3: user must be a name (a non-empty string), not 990"),
    ("rules: {}\nclients:\n  - group: ''\n    rules: {}\n", "policy.yml:3: group must be a"),
    ("rules: {}\nclients:\n  - user: ci\n    rules: [privileged]\n",
     "policy.yml:4: a section's 'rules' must be a mapping"),
    ("rules: {}\nclients:\n  - user: ci\n    rules:\n      privilegd: allow\n",
     "policy.yml:5: clients entry 1: unknown rule 'privilegd'"),
    ("rules: {}\nclients:\n  - user: ci\n    rules:\n      privileged: yes\n",
     "policy.yml:5: rule privileged is 'forbid' or 'allow'"),
    ("rules: {}\nclients:\n  - user: ci\n    rules:\n      bind_mounts: {allow: [srv]}\n",
     "policy.yml:5: bind_mounts.allow: 'srv' is not absolute"),
    ("rules: {}\nclients:\n  - user: ci\n    rules: {}\n    user: ops\n",
     "policy.yml:5: duplicate key 'user'"),
    ("rules: {}\nclients:\n  - user: ci\n    rules: {}\n  - group: ci\n    rules: {}\n"
     "  - user: ci\n    rules: {}\n",
     "policy.yml:7: clients entry 3 names user 'ci' again (also at policy.yml:3)"),
    ("rules: {}\nclient: []\n", "policy.yml:2: unknown key 'client'"),
])
def test_clients_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "policy.yml")
    assert message in str(caught.value)


def test_a_section_without_rules_of_its_own_is_the_default_and_stops_the_search() -> None:
    rules = parse_rules("rules: {privileged: forbid}\nclients:\n  - user: ci\n    rules: {}\n"
                        "  - group: ops\n    rules: {privileged: allow}\n", "policy.yml")
    applied = applied_rules(rules, unix_client("ci", groups=["ops"]))
    assert applied.section is rules.clients[0] and applied.rules.privileged
    assert isinstance(applied.section, ClientSection)
    assert applied.rules == dataclasses.replace(rules, clients=())
