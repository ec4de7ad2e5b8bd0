"""Command-line settings that are checked before anything starts, and the line printed once
the listeners are up."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from powerstrip.cli import LONGEST_BUSY_POLL, UsageError, busy_poll_seconds, docker_host_line
from powerstrip.proxy.addresses import parse_address


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("200", 0.0002),
                                                (str(LONGEST_BUSY_POLL), LONGEST_BUSY_POLL / 1e6)])
def test_busy_poll_is_whole_microseconds(value, seconds):
    assert busy_poll_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["-1", "fast", "1.5", "", " 200", "2_00", "+5", "\u0661\u0660",
              str(LONGEST_BUSY_POLL + 1)],
)
def test_a_busy_poll_that_is_not_whole_microseconds_in_range_is_refused(value):
    with pytest.raises(UsageError, match=r"--busy-poll: .* is not a number of microseconds"):
        busy_poll_seconds(value)


@pytest.mark.parametrize(
    ("listen", "bound", "line"),
    [
        ("tcp://127.0.0.1:0", IPv4Address("TCP", "127.0.0.1", 41000),
         "DOCKER_HOST=tcp://127.0.0.1:41000"),
        ("0.0.0.0:2375", IPv4Address("TCP", "0.0.0.0", 2375), "DOCKER_HOST=tcp://0.0.0.0:2375"),
        ("tcp:0:interface=::1", IPv6Address("TCP", "::1", 41001),
         "DOCKER_HOST=tcp://[::1]:41001"),
        ("ssl:0:interface=127.0.0.1:privateKey=k.pem", IPv4Address("TCP", "127.0.0.1", 41002),
         "DOCKER_HOST=tcp://127.0.0.1:41002 DOCKER_TLS_VERIFY=1"),
        ("unix:///run/p.sock", UNIXAddress(b"/run/p.sock"), "DOCKER_HOST=unix:///run/p.sock"),
        ("unix:address=/run/q.sock", UNIXAddress(b"/run/q.sock"),
         "DOCKER_HOST=unix:///run/q.sock"),
    ],
)
def test_the_printed_line_names_what_was_bound(listen, bound, line):
    assert docker_host_line(parse_address(listen), bound) == line
