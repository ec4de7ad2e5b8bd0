"""Scenarios of the volumes adapter's etcd state, run in a process of their own (each needs a
running reactor for treq): ``python etcd_scenarios.py SCENARIO ETCD_URL``; prints one JSON
result on stdout. The adapters' engines are fakes (``Engine``); etcd is real.

A scenario that needs the test to act on etcd midway (``stopped``) prints a word on a line of
its own and waits for a line on stdin before going on; its result is then the last line."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet import defer, reactor, task, threads

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters"))

import network  # noqa: E402 - the example adapters, by their paths
import volumes  # noqa: E402

from powerstrip.hooks.wire import ClientRequest, pre_hook_call  # noqa: E402
from powerstrip.kit.engine_api import EngineError  # noqa: E402


def _async(coroutine: Any) -> defer.Deferred:
    return defer.ensureDeferred(coroutine)


def _sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def _unique(prefix: str) -> str:
    # One etcd serves a whole test module: each scenario's datasets are its own.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _tell(word: str) -> None:
    """Say ``word`` to the test, and wait until it has done its part."""
    print(word, flush=True)
    await threads.deferToThread(sys.stdin.readline)


class Engine:
    """Enough of a Docker Engine for the volumes adapter to make and move datasets: volumes
    (their content as bytes), transfer containers and their archives, no other containers.
    Every call is noted in ``calls``; volume creates take ``create_delay`` seconds, and
    ``before_download``, when set, is awaited before an archive is read."""

    def __init__(self, address: str, create_delay: float = 0.0) -> None:
        self.address = address
        self.create_delay = create_delay
        self.volumes: dict[str, bytes] = {}
        self.mounts: dict[str, str] = {}  # transfer container -> its volume
        self.calls: list[str] = []
        self.before_download: Callable[[], Awaitable[None]] | None = None

    def request(self, method: str, path: str, query: Any = None, body: Any = None,
                data: Any = None, content_type: str = "application/x-tar") -> defer.Deferred:
        return _async(self._request(method, path, body, data))

    async def _request(self, method: str, path: str, body: Any, data: Any) -> Any:
        self.calls.append(f"{method} {path}")
        kind, what = path.strip("/").split("/")[:2]
        if (kind, what) == ("volumes", "create"):
            await _sleep(self.create_delay)
            self.volumes.setdefault(body["Name"], b"")
            return {"Name": body["Name"]}
        if kind == "volumes":
            if what not in self.volumes:
                raise EngineError(404, f"get {what}: no such volume")
            if method == "DELETE":
                del self.volumes[what]
                return None
            return {"Name": what}
        if (kind, what) == ("containers", "json"):
            return []
        if (kind, what) == ("containers", "create"):
            container = uuid.uuid4().hex
            self.mounts[container] = body["HostConfig"]["Mounts"][0]["Source"]
            return {"Id": container}
        if method == "DELETE":
            self.mounts.pop(what, None)
            return None
        if method == "PUT":
            self.volumes[self.mounts[what]] += data.read()
            return None
        raise AssertionError(f"unexpected call {method} {path}")

    def download(self, path: str, sink: IO[bytes], query: Any = None) -> defer.Deferred:
        async def read() -> int:
            self.calls.append(f"GET {path}")
            if self.before_download is not None:
                await self.before_download()
            content = self.volumes[self.mounts[path.split("/")[2]]]
            sink.write(content)
            return len(content)

        return _async(read())


def _hosts(url: str, names: str, create_delay: float = 0.0
           ) -> tuple[dict[str, Engine], dict[str, Any]]:
    """A fake engine and a volumes adapter (with a store client of its own) per host."""
    engines = {name: Engine(f"unix:///run/{name}.sock", create_delay) for name in names}
    by_address = {engine.address: engine for engine in engines.values()}
    adapters = {name: volumes.Volumes(volumes.EtcdState(url), name, engine.address,
                                      connect=lambda address, timeout: by_address[address])
                for name, engine in engines.items()}
    return engines, adapters


async def _outcome(call: Awaitable[None]) -> list[Any]:
    """What a client would see: ``[200, ""]``, or the refusal's status and message."""
    try:
        await call
    except volumes.Refuse as refusal:
        return [refusal.status, refusal.message]
    return [200, ""]


async def race(url: str) -> dict[str, Any]:
    """Two hosts' adapters make one new dataset at the same moment: one makes it; the other is
    refused (409) while the volume is being made, then moves the dataset when it asks again."""
    name = _unique("shared")
    engines, adapters = _hosts(url, "AB", create_delay=0.5)
    asked = [_async(_outcome(adapters[host].ensure(name))) for host in "AB"]
    await _sleep(0.25)  # both claimed; the winner's volume is still being made
    store = adapters["A"].state
    during = await store.etcd.get(store._key("creating", name))
    outcomes = dict(zip("AB", await defer.gatherResults(asked), strict=True))
    owner = (await store.dataset(name)).host
    after = await store.etcd.get(store._key("creating", name))
    loser = "B" if owner == "A" else "A"
    engines[owner].volumes[volumes.volume_name(name)] = b"made on " + owner.encode()
    again = await _outcome(adapters[loser].ensure(name))
    return {"name": name, "outcomes": outcomes, "owner": owner,
            "during": None if during is None else {"host": json.loads(during.value)["host"],
                                                   "leased": during.lease != 0},
            "after": after is not None, "again": again,
            "moved to": (await store.dataset(name)).host,
            "content": engines[loser].volumes.get(volumes.volume_name(name), b"").decode()}


async def abandoned(url: str) -> dict[str, Any]:
    """Host A dies while making a dataset's volume (after making it): other hosts are refused
    until its creating lease expires, then move the dataset as usual."""
    name = _unique("abandoned")
    engines, adapters = _hosts(url, "AB")
    await adapters["A"].ready()
    dying = volumes.EtcdState(url, create_seconds=2)
    await dying.claim(name, "A", creating=True)
    engines["A"].volumes[volumes.volume_name(name)] = b"made before dying"
    during = await _outcome(adapters["B"].ensure(name))
    await _sleep(4.0)
    after = await _outcome(adapters["B"].ensure(name))
    return {"name": name, "during": during, "after": after,
            "owner": (await dying.dataset(name)).host,
            "content": engines["B"].volumes.get(volumes.volume_name(name), b"").decode()}


async def stopped(url: str) -> dict[str, Any]:
    """etcd stops while host B moves a dataset from host A (the test stops it while A's archive
    is being read, and starts it again once B has answered): B refuses with 503 naming the
    store and keeps no partial copy; A keeps the dataset; once etcd is back, B moves it."""
    name = _unique("moving")
    volume = volumes.volume_name(name)
    engines, adapters = _hosts(url, "AB")
    await adapters["A"].ensure(name)
    engines["A"].volumes[volume] = b"precious"

    async def stop_etcd() -> None:
        await _tell("downloading")

    engines["A"].before_download = stop_etcd
    refused = await _outcome(adapters["B"].ensure(name))
    engines["A"].before_download = None
    left = {"B volumes": sorted(engines["B"].volumes), "B calls": list(engines["B"].calls),
            "A content": engines["A"].volumes.get(volume, b"").decode()}
    await _tell("refused")
    store = adapters["A"].state
    owner = (await store.dataset(name)).host
    again = await _outcome(adapters["B"].ensure(name))
    record = await store.dataset(name)
    return {"name": name, "refused": refused, **left, "owner": owner, "again": again,
            "owner after": record.host, "moving after": record.moving(store.clock()),
            "B content": engines["B"].volumes.get(volume, b"").decode(),
            "A volumes": sorted(engines["A"].volumes)}


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
    await _sleep(4.0)
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
    # The network adapter: its IPAM driver, and a WEAVE_CIDR create on a swarm manager, whose
    # overlay addresses are held in the store.
    net = network.NetworkAdapter(_SwarmManager(), ipam_name="powerstrip-ipam",
                                 reservations=network.EtcdReservations(url),
                                 address="tcp://a:2375")
    await net.ipam.call("RequestPool", {"Pool": "10.8.0.0/24"})
    try:
        await net.ipam.call("RequestAddress", {"PoolID": "10.8.0.0/24"})
    except network.Refuse as refusal:
        answers["ipam"] = [refusal.status, refusal.message]
    call = pre_hook_call(ClientRequest("POST", "/v1.41/containers/create?name=web", json.dumps(
        {"Image": "busybox", "Env": ["WEAVE_CIDR=10.2.1.5/24"]})))
    status, answer = await net.app.handle(call)
    answers["weave"] = [status, json.loads(answer)["message"]]
    return answers


class _SwarmManager:
    """An engine that is a swarm manager with no networks or containers yet."""

    def request(self, method: str, path: str, query: Any = None, body: Any = None
                ) -> defer.Deferred[Any]:
        answers = {("GET", "/info"): {"Swarm": {"LocalNodeState": "active",
                                                "ControlAvailable": True}},
                   ("GET", "/networks"): [], ("GET", "/containers/json"): []}
        return defer.succeed(answers[(method, path)])


async def records(url: str) -> dict[str, Any]:
    """The rest of the interface: hosts, a release, the list."""
    state = volumes.EtcdState(url)
    host = _unique("A")  # other scenarios register hosts A and B in the same etcd
    first = await state.register_host(host, "unix:///a.sock")
    again = await state.register_host(host, "unix:///a2.sock")
    await state.claim("one", host)
    await state.claim("two", host)
    kept = await state.release("two", "B")
    gone = await state.release("two", host)
    return {"host": host, "first": first, "again": again, "engine": await state.engine_of(host),
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
