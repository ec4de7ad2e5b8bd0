"""Scenarios of the volumes adapter's etcd state, run in a process of their own (each needs a
running reactor for treq): ``python etcd_scenarios.py SCENARIO ETCD_URL``; prints one JSON
result on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters"))

import network  # noqa: E402 - the example adapters, by their paths
import volumes  # noqa: E402


def _async(coroutine: Any) -> defer.Deferred:
    return defer.ensureDeferred(coroutine)


async def race(url: str) -> dict[str, Any]:
    """Two hosts claim one dataset at the same moment: one wins."""
    a, b = volumes.EtcdState(url), volumes.EtcdState(url)
    results = await defer.gatherResults([_async(a.claim("shared", "A")),
                                         _async(b.claim("shared", "B"))])
    record = await a.dataset("shared")
    return {"won": [created for _, created in results], "owner": record.host,
            "seen": [r.host for r, _ in results]}


async def lease(url: str) -> dict[str, Any]:
    """B begins a move and dies: its lease expires, C can take the dataset."""
    a = volumes.EtcdState(url)
    b = volumes.EtcdState(url, lease_seconds=2)
    c = volumes.EtcdState(url)
    await a.claim("leased", "A")
    await b.begin_move("leased", "A", "B")
    during = (await a.dataset("leased")).moving(a.clock())
    try:
        await c.begin_move("leased", "A", "C")
        refused = None
    except volumes.MoveInProgress as exc:
        refused = str(exc)
    del b  # the host dies: nothing renews its lease
    await task.deferLater(__import__("twisted.internet.reactor").internet.reactor, 4.0,
                          lambda: None)
    after = (await a.dataset("leased")).moving(a.clock())
    token = await c.begin_move("leased", "A", "C")
    finished = await c.finish_move("leased", token, "A", "C")
    record = await a.dataset("leased")
    return {"during": during, "refused": refused, "after": after, "finished": finished,
            "owner": record.host, "moving": record.moving(a.clock())}


async def down(url: str) -> dict[str, Any]:
    """The store does not answer: a request for a dataset is refused 503, naming the store."""
    state = volumes.EtcdState(url)
    adapter = volumes.Volumes(state, "A", "unix:///nonexistent.sock")
    answers = {}
    try:
        await adapter.ensure("web")
    except volumes.Refuse as refusal:
        answers["ensure"] = [refusal.status, refusal.message]
    try:
        await volumes.VolumeDriver(adapter).call("Get", {"Name": "web"})
    except volumes.Refuse as refusal:
        answers["get"] = [refusal.status, refusal.message]
    return answers


async def records(url: str) -> dict[str, Any]:
    """The rest of the interface: hosts, a release, the list."""
    state = volumes.EtcdState(url)
    first = await state.register_host("A", "unix:///a.sock")
    again = await state.register_host("A", "unix:///a2.sock")
    await state.claim("one", "A")
    await state.claim("two", "A")
    kept = await state.release("two", "B")
    gone = await state.release("two", "A")
    return {"first": first, "again": again, "engine": await state.engine_of("A"),
            "hosts": await state.hosts(), "kept": kept, "gone": gone,
            "datasets": [d.name for d in await state.datasets()]}


async def addresses(url: str) -> dict[str, Any]:
    """Two hosts' IPAM drivers on one subnet, their reservations in etcd: dynamic addresses
    asked at once are all different, a static one given on A is refused on B, a hold on B
    becomes A's endpoint only by being given, and a release frees it."""
    drivers = []
    for _ in range(2):
        adapter = network.NetworkAdapter(None, ipam_name="powerstrip-ipam",
                                         reservations=network.EtcdReservations(url))
        await adapter.ipam.call("RequestPool", {"Pool": "10.7.0.0/24"})
        drivers.append(adapter.ipam)
    a, b = drivers
    asked = [_async(driver.call("RequestAddress", {"PoolID": "10.7.0.0/24"}))
             for driver in (a, b, a, b, a, b)]
    dynamic = [answer["Address"] for answer in await defer.gatherResults(asked)]
    await a.call("RequestAddress", {"PoolID": "10.7.0.0/24", "Address": "10.7.0.50"})
    try:
        await b.call("RequestAddress", {"PoolID": "10.7.0.0/24", "Address": "10.7.0.50"})
        refused = None
    except network.Refuse as refusal:
        refused = [refusal.status, refusal.message]
    await b.hold(__import__("ipaddress").IPv4Network("10.7.0.0/24"),
                 __import__("ipaddress").IPv4Address("10.7.0.60"), "c0ffee")
    skipped = [(await a.call("RequestAddress", {"PoolID": "10.7.0.0/24"}))["Address"]
               for _ in range(60)]
    own = await a.call("RequestAddress", {"PoolID": "10.7.0.0/24", "Address": "10.7.0.60"})
    await a.call("ReleaseAddress", {"PoolID": "10.7.0.0/24", "Address": "10.7.0.50"})
    again = await b.call("RequestAddress", {"PoolID": "10.7.0.0/24", "Address": "10.7.0.50"})
    return {"dynamic": dynamic, "refused": refused, "skipped": skipped, "own": own["Address"],
            "again": again["Address"]}


def main(reactor: Any, scenario: str, url: str) -> defer.Deferred:
    async def run() -> None:
        print(json.dumps(await globals()[scenario](url)), flush=True)

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
