"""Address spellings, as the docker CLI and Twisted know them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.core.errors import error_response
from powerstrip.proxy.addresses import (
    AddressError,
    client_description,
    parse_address,
    server_description,
)


@pytest.mark.parametrize(
    ("text", "docker_host", "server"),
    [
        ("tcp://127.0.0.1:2375", "tcp://127.0.0.1:2375",
         "tcp:port=2375:interface=127.0.0.1:backlog=4096"),
        ("0.0.0.0:2375", "tcp://0.0.0.0:2375", "tcp:port=2375:interface=0.0.0.0:backlog=4096"),
        ("[::1]:2375", "tcp://[::1]:2375", "tcp:port=2375:interface=\\:\\:1:backlog=4096"),
        ("unix:///run/p.sock", "unix:///run/p.sock",
         "unix:address=/run/p.sock:mode=660:backlog=4096"),
        ("systemd:domain=UNIX:index=0", "systemd:domain=UNIX:index=0",
         "systemd:domain=UNIX:index=0"),
    ],
)
def test_spellings(text, docker_host, server):
    address = parse_address(text)
    assert address.docker_host == docker_host
    assert server_description(address) == server


def test_upstream_descriptions():
    assert client_description(parse_address("unix:///var/run/docker.sock")) == (
        "unix:path=/var/run/docker.sock:timeout=10"
    )
    assert client_description(parse_address("tcp://10.0.0.1:2376")) == (
        "tcp:host=10.0.0.1:port=2376:timeout=10"
    )


@pytest.mark.parametrize("text", ["unix://relative.sock", "tcp://nohost", "nonsense", "http://a:b"])
def test_bad_addresses_say_what_is_expected(text):
    with pytest.raises(AddressError):
        parse_address(text)


@given(port=st.integers(1, 65535), host=st.ip_addresses(v=4).map(str))
def test_tcp_round_trip(port, host):
    address = parse_address(f"tcp://{host}:{port}")
    assert parse_address(address.docker_host) == address


@given(status=st.sampled_from([400, 403, 413, 431, 502, 504]), message=st.text(max_size=200))
def test_error_responses_are_docker_style_json(status, message):
    raw = error_response(status, message)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body) == {"message": message}
