"""Which listeners start, with a warning, or not at all: a listener that lets clients in
unauthenticated from beyond this host is refused without ``--insecure-allow-unauthenticated``;
one that lets every local user in starts with a warning. And the ``--tls``/``--tlsverify``
settings, checked before anything starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address

from powerstrip.cli import (
    INSECURE_FLAG,
    UsageError,
    docker_host_line,
    guard_listener,
    is_loopback,
    listener_transport,
    tls_from,
)
from powerstrip.proxy.addresses import parse_address
from powerstrip.proxy.tls import ServerTLS
from tests.tlscerts import make_certs

TLS = ServerTLS(cert="c.pem", key="k.pem")
TLSVERIFY = ServerTLS(cert="c.pem", key="k.pem", ca="ca.pem", verify=True)

LOOPBACK = ["tcp://127.0.0.1:2375", "tcp://[::1]:2375", "tcp://localhost:2375",
            "127.0.0.2:2375", "tcp://[::ffff:127.0.0.1]:2375"]
BEYOND = ["tcp://0.0.0.0:2375", "tcp://[::]:2375", "tcp://192.0.2.7:2375", "0.0.0.0:0"]


def decide(listen: str, tls: ServerTLS | None, insecure: bool) -> str:
    """``ok``, ``warn`` or ``refuse``: what the guard says of ``--listen listen``."""
    address = parse_address(listen)
    transport = listener_transport(address, tls)
    assert transport is not None
    try:
        warning = guard_listener(listen, transport, address.host, insecure)
    except UsageError as exc:
        assert INSECURE_FLAG in str(exc) and listen in str(exc), exc
        assert "without authenticating" in str(exc)
        return "refuse"
    if warning is None:
        return "ok"
    assert listen in warning and "root on this host" in warning
    return "warn"


@pytest.mark.parametrize("insecure", [False, True])
@pytest.mark.parametrize("listen", LOOPBACK)
def test_loopback_starts_with_a_warning_unless_clients_are_verified(listen, insecure):
    assert decide(listen, None, insecure) == "warn"
    assert decide(listen, TLS, insecure) == "warn"
    assert decide(listen, TLSVERIFY, insecure) == "ok"


@pytest.mark.parametrize("listen", BEYOND)
def test_beyond_this_host_unverified_is_refused_without_the_insecure_flag(listen):
    assert decide(listen, None, False) == "refuse"
    assert decide(listen, TLS, False) == "refuse"
    assert decide(listen, TLSVERIFY, False) == "ok"


@pytest.mark.parametrize("listen", BEYOND)
def test_the_insecure_flag_starts_them_with_a_warning(listen):
    assert decide(listen, None, True) == "warn"
    assert decide(listen, TLS, True) == "warn"
    assert decide(listen, TLSVERIFY, True) == "ok"


@pytest.mark.parametrize("insecure", [False, True])
@pytest.mark.parametrize("tls", [None, TLS, TLSVERIFY])
@pytest.mark.parametrize("listen", ["unix:///run/p.sock", "unix:address=/run/q.sock"])
def test_unix_listeners_always_start(listen, tls, insecure):
    assert decide(listen, tls, insecure) == "ok"


@pytest.mark.parametrize(("listen", "transport"), [
    ("ssl:2376:privateKey=k.pem", "tls"), ("tcp:2375", "tcp"), ("tcp6:2375", "tcp"),
    ("unix:address=/run/q.sock", "unix"), ("systemd:domain=INET:index=0", None),
])
def test_a_twisted_description_is_judged_by_its_kind_whatever_the_tls_flags(listen, transport):
    for tls in (None, TLS, TLSVERIFY):
        assert listener_transport(parse_address(listen), tls) == transport


@pytest.mark.parametrize(("host", "bound", "decision"), [
    ("ssl:0:privateKey=k.pem", "0.0.0.0", "refuse"),
    ("ssl:0:interface=127.0.0.1:privateKey=k.pem", "127.0.0.1", "warn"),
    ("tcp:0", "0.0.0.0", "refuse"), ("tcp:0:interface=::1", "::1", "warn"),
])
def test_a_bound_description_is_judged_by_where_it_listens(host, bound, decision):
    transport = listener_transport(parse_address(host), None)
    try:
        warning = guard_listener(host, transport, bound, False)
    except UsageError:
        assert decision == "refuse"
    else:
        assert decision == "warn" and warning


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("", True), ("0.0.0.0", False), ("::", False), ("192.0.2.1", False),
    ("no-such-host.invalid", False),
])
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def _args(**given: object) -> argparse.Namespace:
    values = {"tls": False, "tlsverify": False, "tlscacert": None, "tlscert": None,
              "tlskey": None}
    values.update(given)
    return argparse.Namespace(**values)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("TLS", "TLSVERIFY", "TLSCACERT", "TLSCERT", "TLSKEY"):
        monkeypatch.delenv(f"POWERSTRIP_{name}", raising=False)
    return monkeypatch


@pytest.fixture
def certs(tmp_path) -> Path:
    return make_certs(tmp_path)


def _files(certs: Path) -> dict[str, str]:
    return {"tlscacert": str(certs / "ca.pem"), "tlscert": str(certs / "server-cert.pem"),
            "tlskey": str(certs / "server-key.pem")}


def test_no_tls_flags_is_plain(clean_env):
    assert tls_from(_args()) is None


def test_tlsverify_reads_the_three_files(clean_env, certs):
    settings = tls_from(_args(tlsverify=True, **_files(certs)))
    assert settings == ServerTLS(cert=str(certs / "server-cert.pem"),
                                 key=str(certs / "server-key.pem"), ca=str(certs / "ca.pem"),
                                 verify=True)


def test_tls_alone_needs_no_authority(clean_env, certs):
    files = _files(certs)
    del files["tlscacert"]
    settings = tls_from(_args(tls=True, **files))
    assert settings is not None and not settings.verify and settings.ca is None


def test_the_environment_stands_in_for_the_flags(clean_env, certs):
    clean_env.setenv("POWERSTRIP_TLSVERIFY", "1")
    for flag, path in _files(certs).items():
        clean_env.setenv(f"POWERSTRIP_{flag.upper()}", path)
    settings = tls_from(_args())
    assert settings is not None and settings.verify and settings.ca == str(certs / "ca.pem")
    clean_env.setenv("POWERSTRIP_TLSVERIFY", "0")
    clean_env.setenv("POWERSTRIP_TLS", "true")
    settings = tls_from(_args())
    assert settings is not None and not settings.verify


@pytest.mark.parametrize(("given", "message"), [
    ({"tlsverify": True, "tlscert": "c", "tlskey": "k"}, "--tlsverify needs --tlscacert"),
    ({"tls": True, "tlskey": "k"}, "--tls needs --tlscert"),
    ({"tlscert": "c", "tlskey": "k"}, "--tlscert, --tlskey without --tls or --tlsverify"),
    ({"tlscacert": "ca"}, "--tlscacert without --tls or --tlsverify"),
])
def test_incomplete_tls_settings_are_refused(clean_env, given, message):
    with pytest.raises(UsageError, match=message):
        tls_from(_args(**given))


@pytest.mark.parametrize("which", ["tlscacert", "tlscert", "tlskey"])
def test_a_missing_file_is_named(clean_env, certs, which):
    files = _files(certs)
    files[which] = str(certs / "absent.pem")
    with pytest.raises(UsageError, match=f"--{which}: cannot read .*absent.pem"):
        tls_from(_args(tlsverify=True, **files))


@pytest.mark.parametrize("which", ["tlscacert", "tlscert", "tlskey"])
def test_a_file_that_is_not_pem_is_named(clean_env, certs, which):
    files = _files(certs)
    (certs / "junk.pem").write_text("not a certificate\n")
    files[which] = str(certs / "junk.pem")
    with pytest.raises(UsageError, match=f"--{which}: .*junk.pem holds no PEM"):
        tls_from(_args(tlsverify=True, **files))


def test_a_key_that_is_not_the_certificates_is_refused(clean_env, certs, tmp_path):
    (tmp_path / "other").mkdir()
    other = make_certs(tmp_path / "other")
    files = _files(certs)
    files["tlskey"] = str(other / "server-key.pem")
    with pytest.raises(UsageError, match="do not go together"):
        tls_from(_args(tlsverify=True, **files))


@pytest.mark.parametrize(("tls", "line"), [
    (None, "DOCKER_HOST=tcp://127.0.0.1:41000"),
    (TLS, "DOCKER_HOST=tcp://127.0.0.1:41000 DOCKER_TLS_VERIFY=1"),
    (TLSVERIFY, "DOCKER_HOST=tcp://127.0.0.1:41000 DOCKER_TLS_VERIFY=1"),
])
def test_the_printed_line_says_how_to_speak_tls(tls, line):
    bound = IPv4Address("TCP", "127.0.0.1", 41000)
    assert docker_host_line(parse_address("tcp://127.0.0.1:0"), bound, tls) == line
