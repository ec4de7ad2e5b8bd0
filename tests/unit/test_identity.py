"""Who a client is: how messages name it, which allowlist entries it matches, and reading it
from a connection (a real unix socket's kernel credentials, a certificate's names)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from powerstrip.core.identity import Certificate, Client
from powerstrip.hooks.config import ClientPolicy, ClientRule
from powerstrip.proxy.peer import client_of
from tests.tlscerts import make_certs, make_client

ALICE_CERT = Certificate("CN=alice,O=dev", "alice", ("alice.example", "10.0.0.7"), "9f86d0")
ALICE = Client("tls", "127.0.0.1:53422", certificate=ALICE_CERT)
CI = Client("unix", "/run/powerstrip.sock", uid=1001, gid=1001, pid=4242, user="ci",
            groups=("ci", "docker-ops"))


@pytest.mark.parametrize(("client", "text"), [
    (CI, "unix user ci (uid 1001)"),
    (Client("unix", "/run/p.sock", uid=1234, gid=1234, pid=1), "unix uid 1234"),
    (Client("unix", "/run/p.sock"), "unix client of /run/p.sock (credentials unknown)"),
    (ALICE, "tls client CN=alice,O=dev (127.0.0.1:53422)"),
    (Client("tls", "127.0.0.1:5"), "tls client 127.0.0.1:5 (no client certificate)"),
    (Client("tcp", "127.0.0.1:53422"), "tcp client 127.0.0.1:53422"),
])
def test_describe_names_the_client_by_what_proves_it(client, text):
    assert client.describe() == text


@pytest.mark.parametrize(("rule", "client", "matches"), [
    (ClientRule(user="ci"), CI, True),
    (ClientRule(user="ops"), CI, False),
    (ClientRule(group="docker-ops"), CI, True),  # a supplementary group
    (ClientRule(group="ci"), CI, True),  # the primary group
    (ClientRule(group="wheel"), CI, False),
    (ClientRule(uid=1001), CI, True),
    (ClientRule(uid=0), CI, False),
    (ClientRule(gid=1001), CI, True),
    (ClientRule(user="ci", uid=1001), CI, True),
    (ClientRule(user="ci", uid=0), CI, False),  # every value given must hold
    (ClientRule(common_name="alice"), ALICE, True),
    (ClientRule(common_name="bob"), ALICE, False),
    (ClientRule(san="alice.example"), ALICE, True),
    (ClientRule(san="10.0.0.7"), ALICE, True),
    (ClientRule(san="bob.example"), ALICE, False),
    # A name of one kind never stands for another: a user is no certificate, nor the reverse.
    (ClientRule(common_name="ci"), CI, False),
    (ClientRule(user="alice"), ALICE, False),
    (ClientRule(uid=0), Client("tcp", "127.0.0.1:1"), False),
    (ClientRule(common_name="alice"), Client("tls", "127.0.0.1:1"), False),
])
def test_an_allowlist_entry_matches_clients_with_every_value_it_names(rule, client, matches):
    assert rule.matches(client) is matches


def test_a_policy_refuses_whom_no_entry_names_and_says_who_it_took_them_for():
    policy = ClientPolicy((ClientRule(user="ops"), ClientRule(common_name="alice")))
    assert policy.refusal(ALICE) is None
    refusal = policy.refusal(CI)
    assert refusal is not None and "unix user ci (uid 1001)" in refusal
    assert "allowlist" in refusal
    assert ClientPolicy(()).refusal(ALICE) is not None  # an empty list lets nobody in


class _Transport:
    def __init__(self, host: object, peer: object = None, handle: object = None) -> None:
        self.host, self.peer, self.handle = host, peer, handle

    def getHost(self) -> object:  # noqa: N802 - Twisted's name
        return self.host

    def getPeer(self) -> object:  # noqa: N802 - Twisted's name
        return self.peer

    def getHandle(self) -> object:  # noqa: N802 - Twisted's name
        return self.handle


@implementer(ISSLTransport)
class _TLSTransport(_Transport):
    def __init__(self, peer: object, certificate: object) -> None:
        super().__init__(IPv4Address("TCP", "127.0.0.1", 2376), peer)
        self.certificate = certificate

    def getPeerCertificate(self) -> object:  # noqa: N802 - Twisted's name
        return self.certificate


def test_a_unix_client_is_known_by_the_kernels_credentials():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        client = client_of(_Transport(UNIXAddress(b"/run/p.sock"), UNIXAddress(None), ours))
    uid, gid = os.getuid(), os.getgid()
    assert (client.transport, client.address) == ("unix", "/run/p.sock")
    assert (client.uid, client.gid, client.pid) == (uid, gid, os.getpid())
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    assert client.user == user
    try:
        assert grp.getgrgid(gid).gr_name in client.groups
    except KeyError:
        pass


def test_a_unix_listener_named_by_the_caller_is_the_address():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        client = client_of(_Transport(UNIXAddress(None), None, ours), "/run/given.sock")
    assert client.address == "/run/given.sock" and client.uid == os.getuid()


def test_a_unix_socket_without_credentials_gives_an_unknown_client():
    client = client_of(_Transport(UNIXAddress(b"/run/p.sock"), None, object()))
    assert client == Client("unix", "/run/p.sock")


def test_a_tcp_client_is_known_by_its_address():
    v4 = client_of(_Transport(IPv4Address("TCP", "127.0.0.1", 2375),
                              IPv4Address("TCP", "127.0.0.1", 53422)))
    v6 = client_of(_Transport(IPv6Address("TCP", "::1", 2375), IPv6Address("TCP", "::1", 9)))
    assert v4 == Client("tcp", "127.0.0.1:53422")
    assert v6 == Client("tcp", "[::1]:9")


def test_a_tls_client_is_known_by_its_verified_certificate(tmp_path: Path):
    make_client(tmp_path / "alice", make_certs(tmp_path), "alice")
    pem = (tmp_path / "alice" / "cert.pem").read_bytes()
    peer = crypto.load_certificate(crypto.FILETYPE_PEM, pem)
    client = client_of(_TLSTransport(IPv4Address("TCP", "127.0.0.1", 53422), peer))
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert client == Client("tls", "127.0.0.1:53422", certificate=Certificate(
        "CN=alice", "alice", (), hashlib.sha256(der).hexdigest()))
    assert client.describe() == "tls client CN=alice (127.0.0.1:53422)"


def test_a_tls_client_certificate_lists_its_alternative_names(tmp_path: Path):
    make_certs(tmp_path)  # the server's certificate carries 127.0.0.1 and localhost
    pem = (tmp_path / "server-cert.pem").read_bytes()
    peer = crypto.load_certificate(crypto.FILETYPE_PEM, pem)
    client = client_of(_TLSTransport(IPv4Address("TCP", "127.0.0.1", 1), peer))
    assert client.certificate is not None
    assert client.certificate.common_name == "127.0.0.1"
    assert client.certificate.sans == ("127.0.0.1", "localhost")


def test_a_tls_client_without_a_certificate_has_none():
    client = client_of(_TLSTransport(IPv4Address("TCP", "127.0.0.1", 53422), None))
    assert client == Client("tls", "127.0.0.1:53422")


def test_the_machine_asks_the_gate_before_each_request_and_refuses_with_403():
    from powerstrip.core.exchange import Machine
    from tests.unit.test_exchange import Recorder

    answers = [None, "not you"]
    asked: list[int] = []

    def gate() -> str | None:
        asked.append(1)
        return answers[len(asked) - 1]

    fx = Recorder()
    machine = Machine(fx, gate=gate)
    ping = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
    machine.client_data(ping)
    assert bytes(fx.daemon) == ping
    machine.daemon_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    machine.client_data(b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bytes(fx.daemon) == ping  # the refused request never reached the daemon
    assert fx.client.startswith(b"HTTP/1.1 200 OK")
    refused = bytes(fx.client).split(b"OK", 2)[-1]
    assert refused.startswith(b"HTTP/1.1 403 ")
    assert json.loads(refused.split(b"\r\n\r\n", 1)[1]) == {"message": "not you"}
    assert fx.closed and not fx.after_close
    assert len(asked) == 2
