"""The adapters' state in a real etcd (Debian's etcd-server, installed by the bootstrap): two
hosts making one new dataset at once (one makes it, the other is refused 409 until it is made),
a host killed mid-create or mid-move (its lease expires and the dataset can be taken again), the
store stopped, before a request or in the middle of a move (a 503 naming it, nothing
half-moved, and back to work once it returns), and two hosts' IPAM drivers sharing one set of
address reservations."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powerstrip_dev.etcd import EtcdServer

pytestmark = pytest.mark.timeout(120)

SCENARIOS = Path(__file__).with_name("etcd_scenarios.py")


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer(tempfile.mkdtemp(prefix="ps-etcd-"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scenario(name: str, url: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(SCENARIOS), name, url], capture_output=True,
                          timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_hosts_claiming_one_dataset_at_once(etcd) -> None:
    result = scenario("race", etcd.url)
    name, winner = result["name"], result["owner"]
    loser = "B" if winner == "A" else "A"
    assert result["outcomes"] == {
        winner: [200, ""],
        loser: [409, f"dataset {name} is being created on host {winner} at this moment; "
                     "try again once it is made"],
    }, result
    # While the winner made the volume, the record said so, on a lease; once made, no more.
    assert result["during"] == {"host": winner, "leased": True}
    assert result["after"] is False
    # Asked again once it is made, the loser moves it: a move right after a create.
    assert result["again"] == [200, ""]
    assert result["moved to"] == loser and result["content"] == f"made on {winner}"


def test_a_host_killed_mid_create_holds_off_others_only_until_its_lease_expires(etcd) -> None:
    result = scenario("abandoned", etcd.url)
    assert result["during"][0] == 409
    assert f"dataset {result['name']} is being created on host A" in result["during"][1]
    assert result["after"] == [200, ""]
    assert result["owner"] == "B" and result["content"] == "made before dying"


def test_a_host_killed_mid_move_leaves_the_dataset_to_be_taken_again(etcd) -> None:
    result = scenario("lease", etcd.url)
    assert result["during"] == "B"
    assert result["refused"] == "dataset leased is being moved to host B"
    assert result["after"] is None  # the lease expired in etcd
    assert result["finished"] and result["owner"] == "C" and result["moving"] is None


def test_records_hosts_and_releases(etcd) -> None:
    result = scenario("records", etcd.url)
    assert result["first"] is None and result["again"] == "unix:///a.sock"
    assert result["engine"] == "unix:///a2.sock"
    assert result["hosts"][result["host"]] == "unix:///a2.sock"
    assert result["kept"] is False and result["gone"] is True
    assert "one" in result["datasets"] and "two" not in result["datasets"]


def test_a_store_that_is_away_is_a_503_naming_it(etcd) -> None:
    etcd.stop()
    try:
        result = scenario("down", etcd.url)
    finally:
        etcd.start()
    for status, message in result.values():
        assert status == 503, result
        assert f"etcd at {etcd.url} unreachable" in message, message
    assert result["ensure"][1].startswith("dataset web: ")
    assert set(result) == {"ensure", "get", "ipam", "weave"}, result
    assert result["weave"][1].startswith("10.2.1.5 on network weave-10-2-1-0-24: "), result
    # And back: the store answers again.
    assert scenario("records", etcd.url)["engine"] == "unix:///a2.sock"


@pytest.mark.timeout(30)
def test_the_store_stopped_mid_move_leaves_nothing_half_moved(etcd) -> None:
    proc = subprocess.Popen([sys.executable, str(SCENARIOS), "stopped", etcd.url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Host B is reading A's archive: the store goes away before the move is recorded.
        assert proc.stdout.readline() == "downloading\n"
        etcd.stop()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "refused\n"
        etcd.start()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
    finally:
        if etcd.proc is None:
            etcd.start()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    name, volume = result["name"], f"flocker-{result['name']}"
    status, message = result["refused"]
    assert status == 503, result
    assert message.startswith(f"dataset {name}: etcd at {etcd.url} unreachable"), message
    # Nothing half-moved: B's partial copy was removed, A's is whole and still A's.
    assert f"DELETE /volumes/{volume}" in result["B calls"]
    assert result["B volumes"] == []
    assert result["A content"] == "precious"
    assert result["owner"] == "A"
    # The store back, the same request moves it.
    assert result["again"] == [200, ""]
    assert result["owner after"] == "B" and result["moving after"] is None
    assert result["B content"] == "precious" and result["A volumes"] == []


def test_two_hosts_ipam_drivers_never_give_one_address_twice(etcd) -> None:
    result = scenario("addresses", etcd.url)
    assert len(set(result["dynamic"])) == 6, result["dynamic"]
    assert result["refused"][0] == 409 and "10.7.0.50 on 10.7.0.0/24 is already given" in \
        result["refused"][1]
    assert "10.7.0.60/24" not in result["skipped"]  # held by a container of the hook's
    assert not set(result["skipped"]) & set(result["dynamic"])
    assert result["own"] == "10.7.0.60/24"  # its holder's endpoint takes it
    assert result["again"] == "10.7.0.50/24"  # released on A, given on B
