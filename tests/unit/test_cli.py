"""Command-line settings that are checked before anything starts, and the line printed once
the listeners are up."""

from __future__ import annotations

import argparse

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from powerstrip.cli import (
    LONGEST_BUSY_POLL,
    UsageError,
    busy_poll_seconds,
    docker_host_line,
    workers_from,
)
from powerstrip.proxy.addresses import parse_address
from powerstrip.proxy.workers import shareable, worker_share


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


@pytest.mark.parametrize(("flag", "env", "count"), [(None, None, 1), (None, "3", 3), ("2", "3", 2),
                                                    (None, "", 1)])
def test_the_worker_count_comes_from_the_flag_then_the_environment(monkeypatch, flag, env,
                                                                    count):
    if env is None:
        monkeypatch.delenv("POWERSTRIP_WORKERS", raising=False)
    else:
        monkeypatch.setenv("POWERSTRIP_WORKERS", env)
    assert workers_from(argparse.Namespace(workers=flag)) == count


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_worker_count_below_one_or_not_whole_is_refused(value):
    with pytest.raises(UsageError, match="--workers"):
        workers_from(argparse.Namespace(workers=value))


@pytest.mark.parametrize(("limit", "workers", "share"),
                         [(1024, 2, 512), (1025, 2, 512), (0, 4, 0), (3, 4, 1), (10, 1, 10)])
def test_each_worker_takes_its_share_of_max_connections(limit, workers, share):
    assert worker_share(limit, workers) == share


@pytest.mark.parametrize(("listen", "shared"), [
    ("tcp://127.0.0.1:0", True), ("127.0.0.1:2375", True), ("unix:///run/p.sock", True),
    ("ssl:2376:privateKey=k.pem", False), ("systemd:domain=UNIX:index=0", False),
    ("tcp:2375", False),
])
def test_only_plain_tcp_and_unix_listeners_are_shared_by_workers(listen, shared):
    assert shareable(parse_address(listen)) is shared


def test_the_descriptor_limit_counts_adapter_connections_too() -> None:
    """A hooked request in flight holds three descriptors (client, daemon, adapter), and idle
    adapter connections are kept besides: 1024 clients at once must not run out."""
    from powerstrip import cli

    assert cli.descriptors_wanted(1024) == 3 * 1024 + cli.DESCRIPTOR_SLACK
    assert cli.descriptors_wanted(0) is None
    assert cli.DESCRIPTOR_SLACK >= 4 * 128, "room for the idle connections of a few adapters"
