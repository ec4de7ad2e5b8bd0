"""Docker's plugin protocol, pure: AuthZ calls read as dockerd writes them, translated into the
request a pre-hook sees (and back, for calling Docker's AuthZ plugins), and refused when dockerd
would have read a body it did not show."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.core.identity import Certificate, Client
from powerstrip.hooks.wire import ClientRequest, ServerResponse
from powerstrip.plugins import wire

CREATE = {"Image": "busybox", "HostConfig": {"Privileged": True}}


def authz_call(**fields) -> bytes:
    document = {"RequestMethod": "POST", "RequestUri": "/v1.41/containers/create",
                "RequestHeaders": {"Content-Type": "application/json",
                                   "Content-Length": str(len(json.dumps(CREATE)))},
                "RequestBody": base64.b64encode(json.dumps(CREATE).encode()).decode()}
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def test_activation_and_errors_are_dockers_json():
    assert wire.activate_answer(["authz", "VolumeDriver"]) == {
        "Implements": ["authz", "VolumeDriver"]}
    assert wire.error_answer("no") == {"Err": "no"}
    assert wire.read_object(b"", "call") == {}
    assert wire.read_object(b"null", "call") == {}
    with pytest.raises(wire.PluginCallError, match="not an object"):
        wire.read_object(b"[1]", "call")


def test_an_authz_request_becomes_the_request_a_pre_hook_sees():
    call = wire.read_authz_call(authz_call())
    request = wire.authz_request(call)
    assert (request.method, request.request) == ("POST", "/v1.41/containers/create")
    assert json.loads(request.body) == CREATE
    assert dict(request.headers)["Content-Type"] == "application/json"
    assert wire.client_of(call) == Client("unix", "dockerd")
    assert wire.hidden_body(call) is None


def test_a_body_in_another_spelling_is_shown_as_the_daemon_reads_it():
    body = b'{"image": "busybox", "hostconfig": {"privileged": true}}'
    call = wire.read_authz_call(authz_call(RequestBody=base64.b64encode(body).decode()))
    assert json.loads(wire.authz_request(call).body) == CREATE
    twice = b'{"Image": "a", "image": null}'
    call = wire.read_authz_call(authz_call(RequestBody=base64.b64encode(twice).decode()))
    with pytest.raises(wire.AmbiguousBody):
        wire.authz_request(call)


@pytest.mark.parametrize(("headers", "hidden"), [
    ({"Content-Type": "application/json"}, True),                    # chunked: no length
    ({"Content-Type": "application/json", "Content-Length": "2000000"}, True),  # over 1 MiB
    ({"Content-Type": "application/json; charset=utf-8", "Content-Length": "9"}, True),
    ({"Content-Type": "application/json", "Content-Length": "0"}, False),
    ({"Content-Type": "application/x-tar"}, False),                  # a build context
    ({}, False),
])
def test_a_json_body_dockerd_did_not_show_is_refused(headers, hidden):
    call = wire.read_authz_call(authz_call(RequestBody=None, RequestHeaders=headers))
    assert (wire.hidden_body(call) is not None) is hidden
    get = wire.read_authz_call(authz_call(RequestBody=None, RequestHeaders=headers,
                                          RequestMethod="GET"))
    assert wire.hidden_body(get) is None


def test_a_tls_user_is_the_client_of_protocol_2(tmp_path):
    from tests.tlscerts import make_certs, make_client

    authority = make_certs(tmp_path)
    make_client(tmp_path / "alice", authority, "alice", sans=("alice.example",))
    pem = (tmp_path / "alice" / "cert.pem").read_text()
    call = wire.read_authz_call(authz_call(User="alice", UserAuthNMethod="TLS",
                                           RequestPeerCertificates=[pem]))
    client = wire.client_of(call)
    assert client.transport == "tls" and client.certificate.common_name == "alice"
    assert client.certificate.sans == ("alice.example",)
    assert len(client.certificate.sha256) == 64
    bare = wire.client_of(wire.read_authz_call(authz_call(User="bob", UserAuthNMethod="TLS")))
    assert bare.certificate == Certificate("CN=bob", "bob", (), "")


def test_an_authz_response_becomes_the_response_a_post_hook_sees():
    call = wire.read_authz_call(authz_call(
        ResponseStatusCode=201, ResponseBody=base64.b64encode(b'{"Id": "x"}').decode(),
        ResponseHeaders={"Content-Type": "application/json", "Api-Version": "1.41"}))
    response = wire.authz_response(call)
    assert (response.code, response.content_type, response.body) == (
        201, "application/json", '{"Id": "x"}')


@pytest.mark.parametrize("payload", [
    b'{"RequestBody": "***"}', b'{"RequestHeaders": {"A": 1}}', b'{"RequestMethod": 3}',
    b'{"ResponseStatusCode": "200"}', b'{"RequestPeerCertificates": [1]}', b"not json",
])
def test_malformed_calls_are_errors(payload):
    with pytest.raises(wire.PluginCallError):
        wire.read_authz_call(payload)


def test_the_proxy_builds_the_call_dockerd_would_send():
    request = ClientRequest("POST", "/v1.41/containers/create", json.dumps(CREATE), headers=(
        ("Content-Type", "application/json"), ("X-Registry-Auth", "secret"),
        ("Authorization", "Basic x")))
    client = Client("tls", "127.0.0.1:1", certificate=Certificate("CN=al", "al", (), "0" * 64))
    call = wire.authz_call_for(request, client, json.dumps(CREATE).encode())
    document = call.to_wire()
    assert document["User"] == "al" and document["UserAuthNMethod"] == "TLS"
    assert set(document["RequestHeaders"]) == {"Content-Type"}  # credentials never sent
    assert base64.b64decode(document["RequestBody"]) == json.dumps(CREATE).encode()
    assert wire.read_authz_call(json.dumps(document).encode()) == call
    response = ServerResponse("application/json", '{"Id": "x"}', 201,
                              (("Content-Type", "application/json"),))
    document = wire.authz_call_for(request, Client("unix", "/s"), None, response).to_wire()
    assert "User" not in document and "RequestBody" not in document
    assert document["ResponseStatusCode"] == 201
    assert base64.b64decode(document["ResponseBody"]) == b'{"Id": "x"}'


@given(st.booleans(), st.text(max_size=30))
def test_verdicts_round_trip(allow, message):
    verdict = wire.read_authz_answer(json.dumps(wire.authz_answer(allow, message)).encode())
    assert (verdict.allow, verdict.message) == (allow, message)


def test_an_answer_without_allow_denies():
    assert not wire.read_authz_answer(b"{}").allow
    assert wire.read_authz_answer(b'{"Err": "boom"}').error == "boom"


def test_every_kind_of_subject_alternative_name_is_text():
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    from powerstrip.core.certificates import certificate_of

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("carol.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                x509.RFC822Name("carol@example.org"),
                x509.UniformResourceIdentifier("spiffe://example/carol"),
                x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])),
                x509.RegisteredID(ObjectIdentifier("1.2.3.4")),
                x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03abc"),
            ]), critical=False)
            .sign(key, hashes.SHA256()))
    assert certificate_of(cert).sans == (
        "carol.example", "10.0.0.1", "carol@example.org", "spiffe://example/carol", "CN=d",
        "1.2.3.4", "1.3.6.1.4.1.311.20.2.3:0c03616263")
