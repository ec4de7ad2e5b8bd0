"""The volumes adapter without sockets: bind and mount rewriting, dataset names, the SQLite state
file, and whole hook calls (``Adapter.handle``) against in-memory engines."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from powerstrip.hooks.wire import ClientRequest, parse_pre_hook_answer, pre_hook_call
from powerstrip.kit.engine_api import EngineError

ROOT = Path(__file__).resolve().parents[2]


def _load() -> Any:
    # adapters/ is a directory of scripts, not a package.
    spec = importlib.util.spec_from_file_location("volumes_adapter", ROOT / "adapters/volumes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


volumes = _load()
BadBind = volumes.BadBind
PREFIX = "/flocker"


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web", "db-1", "A.b_c-9", "9lives", "x" * 128])
def test_valid_names(name):
    assert volumes.check_name(name) == name
    assert volumes.volume_name(name) == "flocker-" + name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "_x", "a/b", "a b", "bad$name", "a:b", "é", "x" * 129, "..",
             "a\nb", "a\x00b"],
)
def test_invalid_names_are_refused(name):
    with pytest.raises(BadBind, match="not a valid dataset name"):
        volumes.check_name(name)


@given(st.text())
def test_any_accepted_name_makes_a_docker_volume_name(name):
    try:
        volumes.check_name(name)
    except BadBind:
        return
    # Docker's own rule for volume names.
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", volumes.volume_name(name))


# -- bind sources -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dataset"),
    [
        ("/flocker/web", "web"),
        ("/flocker/web/", "web"),
        ("//flocker//web", "web"),
        ("/flocker/./web", "web"),
        ("/flocker/x/../web", "web"),
        ("/flocker", None),
        ("/flocker/", None),
        ("/flockerweb", None),
        ("/data/flocker/web", None),
        ("/flocker/../etc", None),
        ("flocker/web", None),
        ("web", None),
        (None, None),
    ],
)
def test_dataset_of(source, dataset):
    assert volumes.dataset_of(source, PREFIX) == dataset


@pytest.mark.parametrize("source", ["/flocker/a/b", "/flocker/.hidden", "/flocker/bad$name"])
def test_dataset_of_refuses_bad_names_under_the_prefix(source):
    with pytest.raises(BadBind):
        volumes.dataset_of(source, PREFIX)


@pytest.mark.parametrize("prefix", ["/", "", "relative", "//"])
def test_unusable_prefixes(prefix):
    with pytest.raises(ValueError):
        volumes.normalise_prefix(prefix)


def test_prefix_is_cleaned():
    assert volumes.normalise_prefix("/srv//datasets/") == "/srv/datasets"


# -- binds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "rewritten", "dataset"),
    [
        ("/flocker/web:/data", "flocker-web:/data", "web"),
        ("/flocker/web:/data:ro", "flocker-web:/data:ro", "web"),
        ("/flocker/web:/data:rw", "flocker-web:/data:rw", "web"),
        ("/flocker/web:/data:ro,Z", "flocker-web:/data:ro,Z", "web"),
        ("/flocker/web:/data:nocopy", "flocker-web:/data:nocopy", "web"),
        ("/tmp:/data", "/tmp:/data", None),
        ("named:/data:ro", "named:/data:ro", None),
        ("/flocker-other/web:/data", "/flocker-other/web:/data", None),
        (7, 7, None),
    ],
)
def test_rewrite_bind(bind, rewritten, dataset):
    assert volumes.rewrite_bind(bind, PREFIX) == (rewritten, dataset)


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        ("/flocker/web", "expected SOURCE:TARGET"),
        ("/flocker/web:", "expected SOURCE:TARGET"),
        ("/flocker/web:/a:ro:x", "expected SOURCE:TARGET"),
        ("/flocker/web:/data:rshared", "propagation 'rshared' applies to host directories"),
        ("/flocker/web:/data:ro,slave", "propagation 'slave'"),
        ("/flocker/web:/data:", "unknown mode ''"),
        ("/flocker/web:/data:rx", "unknown mode 'rx'"),
        ("/flocker/a/b:/data", "not a valid dataset name"),
    ],
)
def test_bad_binds_are_refused(bind, message):
    with pytest.raises(BadBind, match=message.replace("(", r"\(")):
        volumes.rewrite_bind(bind, PREFIX)


@given(
    name=st.from_regex(volumes.DATASET_NAME, fullmatch=True),
    target=st.from_regex(r"/[a-z0-9/._-]{0,20}", fullmatch=True),
    mode=st.sampled_from([None, "ro", "rw", "z", "ro,z", "rw,nocopy"]),
)
def test_rewritten_binds_keep_target_and_mode(name, target, mode):
    bind = f"/flocker/{name}:{target}" + (f":{mode}" if mode else "")
    rewritten, dataset = volumes.rewrite_bind(bind, PREFIX)
    assert dataset == name
    assert rewritten == f"flocker-{name}:{target}" + (f":{mode}" if mode else "")


@given(
    source=st.sampled_from(["/tmp", "/srv/flocker/", "/flockerx", "/", "named", "flocker/"]),
    suffix=st.text(alphabet="abcXYZ019-_.", max_size=12),
    rest=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
)
def test_binds_outside_the_prefix_pass_unchanged(source, suffix, rest):
    bind = f"{source}{suffix}:{rest}"
    assert volumes.rewrite_bind(bind, PREFIX) == (bind, None)


# -- mounts -----------------------------------------------------------------------------------


def test_rewrite_mount_turns_a_bind_into_a_volume_mount():
    mount = {"Type": "bind", "Source": "/flocker/web", "Target": "/data", "ReadOnly": True,
             "BindOptions": {"NonRecursive": False}, "Consistency": "default"}
    rewritten, dataset = volumes.rewrite_mount(mount, PREFIX)
    assert dataset == "web"
    assert rewritten == {"Type": "volume", "Source": "flocker-web", "Target": "/data",
                         "ReadOnly": True, "Consistency": "default"}
    assert mount["Type"] == "bind", "the original is left alone"


@pytest.mark.parametrize(
    "mount",
    [
        {"Type": "volume", "Source": "/flocker/web", "Target": "/data"},
        {"Type": "bind", "Source": "/srv/web", "Target": "/data"},
        {"Type": "tmpfs", "Target": "/data"},
        "not a mount",
    ],
)
def test_other_mounts_pass_unchanged(mount):
    assert volumes.rewrite_mount(mount, PREFIX) == (mount, None)


def test_mount_propagation_is_refused():
    mount = {"Type": "bind", "Source": "/flocker/web", "Target": "/d",
             "BindOptions": {"Propagation": "rshared"}}
    with pytest.raises(BadBind, match="propagation"):
        volumes.rewrite_mount(mount, PREFIX)


def test_mount_keys_are_read_as_the_daemon_reads_them():
    # Go's encoding/json matches keys case-insensitively; the last spelling wins.
    mount = {"type": "bind", "SOURCE": "/srv/x", "source": "/flocker/web", "Target": "/d"}
    rewritten, dataset = volumes.rewrite_mount(mount, PREFIX)
    assert dataset == "web"
    assert rewritten == {"Type": "volume", "Source": "flocker-web", "Target": "/d"}


# -- create bodies ----------------------------------------------------------------------------


def test_rewrite_create():
    body = {
        "Image": "busybox",
        "HostConfig": {
            "Binds": ["/flocker/web:/data", "/tmp:/tmp", "/flocker/db:/db:ro",
                      "/flocker/web:/again"],
            "Mounts": [{"Type": "bind", "Source": "/flocker/logs", "Target": "/logs"}],
        },
    }
    original = json.loads(json.dumps(body))
    rewritten, names = volumes.rewrite_create(body, PREFIX)
    assert names == ["web", "db", "logs"]
    assert rewritten["HostConfig"]["Binds"] == [
        "flocker-web:/data", "/tmp:/tmp", "flocker-db:/db:ro", "flocker-web:/again"]
    assert rewritten["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Source": "flocker-logs", "Target": "/logs"}]
    assert body == original


def test_rewrite_create_sees_every_spelling_the_daemon_accepts():
    body = {"hostconfig": {"binds": ["/flocker/a:/a"], "MOUNTS": [
        {"type": "bind", "source": "/flocker/b", "target": "/b"}]}}
    rewritten, names = volumes.rewrite_create(body, PREFIX)
    assert names == ["a", "b"]
    assert rewritten["hostconfig"]["binds"] == ["flocker-a:/a"]
    assert rewritten["hostconfig"]["MOUNTS"][0]["Source"] == "flocker-b"


def test_rewrite_create_folds_keys_as_go_does():
    # U+017F LONG S folds to s in Go's key matching; U+0131 DOTLESS I does not fold to i.
    body = {"HostConfig": {"Bind\u017f": ["/flocker/a:/a"]}}
    assert volumes.rewrite_create(body, PREFIX)[1] == ["a"]
    body = {"HostConfig": {"B\u0131nds": ["/flocker/a:/a"]}}
    assert volumes.rewrite_create(body, PREFIX) == (body, [])


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"HostConfig": None}, {"HostConfig": {"Binds": None}},
     {"HostConfig": {"Binds": ["/tmp:/x"], "Mounts": None}}, {"Image": "busybox"}],
)
def test_rewrite_create_without_datasets(body):
    assert volumes.rewrite_create(body, PREFIX) == (body, [])


# -- the state file ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "datasets.sqlite"


@pytest.fixture
def state(state_path, clock):
    opened = volumes.State(state_path, clock)
    yield opened
    opened.close()


def test_hosts_are_registered_and_persist(state, state_path):
    assert state.register_host("A", "unix:///a.sock") is None
    assert state.register_host("B", "tcp://10.0.0.2:2375") is None
    assert state.register_host("A", "unix:///a.sock") is None
    assert state.register_host("A", "unix:///a2.sock") == "unix:///a.sock"
    reopened = volumes.State(state_path)
    assert reopened.hosts() == {"A": "unix:///a2.sock", "B": "tcp://10.0.0.2:2375"}
    assert reopened.engine_of("B") == "tcp://10.0.0.2:2375"
    assert reopened.engine_of("C") is None


def test_first_claim_wins_across_processes(state, state_path):
    other = volumes.State(state_path)
    record, created = state.claim("web", "A")
    assert (record.host, created) == ("A", True)
    record, created = other.claim("web", "B")
    assert (record.host, created) == ("A", False)
    assert other.dataset("web") == volumes.Dataset("web", "A")
    assert [d.name for d in volumes.State(state_path).datasets()] == ["web"]


def test_release_forgets_only_the_owners_claim(state):
    state.claim("web", "A")
    assert not state.release("web", "B")
    assert state.release("web", "A")
    assert state.dataset("web") is None


def test_a_move_hands_the_dataset_over(state, clock):
    state.claim("web", "A")
    token = state.begin_move("web", "A", "B")
    assert state.dataset("web").moving(clock()) == "B"
    assert state.finish_move("web", token, "A", "B")
    record = state.dataset("web")
    assert (record.host, record.moving(clock())) == ("B", None)
    assert not state.finish_move("web", token, "A", "B"), "a lease is good once"


def test_a_move_from_the_wrong_owner_is_refused(state):
    state.claim("web", "A")
    with pytest.raises(volumes.OwnerChanged):
        state.begin_move("web", "C", "B")
    with pytest.raises(volumes.OwnerChanged):
        state.begin_move("unknown", "A", "B")


def test_a_lease_holds_off_other_hosts_until_it_expires(state, clock):
    state.claim("web", "A")
    token = state.begin_move("web", "A", "B")
    with pytest.raises(volumes.MoveInProgress) as caught:
        state.begin_move("web", "A", "C")
    assert caught.value.to == "B"
    assert not state.release("web", "A"), "a held dataset is not forgotten"
    clock.now += volumes.LEASE_SECONDS + 1
    late = state.begin_move("web", "A", "C")
    assert not state.finish_move("web", token, "A", "B"), "the expired lease lost the dataset"
    assert state.finish_move("web", late, "A", "C")
    assert state.dataset("web").host == "C"


def test_a_host_takes_over_its_own_stale_lease(state):
    state.claim("web", "A")
    stale = state.begin_move("web", "A", "B")
    fresh = state.begin_move("web", "A", "B")
    assert not state.renew("web", stale)
    assert state.renew("web", fresh)
    assert state.finish_move("web", fresh, "A", "B")


def test_abandon_drops_only_its_own_lease(state, clock):
    state.claim("web", "A")
    token = state.begin_move("web", "A", "B")
    state.abandon_move("web", "someone else's")
    assert state.dataset("web").moving(clock()) == "B"
    state.abandon_move("web", token)
    assert state.dataset("web") == volumes.Dataset("web", "A")


def test_a_new_dataset_is_being_created_until_its_volume_exists(state, state_path, clock):
    other = volumes.State(state_path, clock)
    record, created = state.claim("web", "A", creating=True)
    assert created and record.creating(clock())
    record, created = other.claim("web", "B", creating=True)
    assert (record.host, created) == ("A", False)
    assert record.creating(clock()), "the loser sees that the winner is still making it"
    with pytest.raises(volumes.BeingCreated, match="dataset web is being created on host A"):
        other.begin_move("web", "A", "B")
    other.finish_create("web", "B")
    assert state.dataset("web").creating(clock()), "only the owner's word lifts it"
    state.finish_create("web", "A")
    assert state.dataset("web") == volumes.Dataset("web", "A")
    other.begin_move("web", "A", "B")


def test_a_create_whose_maker_died_stops_holding_off_other_hosts(state, clock):
    state.claim("web", "A", creating=True)
    clock.now += volumes.CREATE_SECONDS + 1
    assert not state.dataset("web").creating(clock())
    token = state.begin_move("web", "A", "B")
    assert state.finish_move("web", token, "A", "B")


def test_a_released_claim_takes_its_create_with_it(state, clock):
    state.claim("web", "A", creating=True)
    assert state.release("web", "A")
    record, created = state.claim("web", "B", creating=True)
    assert (record.host, created) == ("B", True)


def test_a_state_file_of_an_older_adapter_is_brought_up_to_date(state_path, clock):
    old = sqlite3.connect(state_path)
    old.executescript("""
        CREATE TABLE hosts (name TEXT PRIMARY KEY, engine TEXT NOT NULL, registered REAL NOT NULL);
        CREATE TABLE datasets (name TEXT PRIMARY KEY, host TEXT NOT NULL, created REAL NOT NULL,
            moved REAL, moving_to TEXT, lease TEXT, lease_until REAL);
        INSERT INTO datasets (name, host, created) VALUES ('old', 'A', 1);
    """)
    old.close()
    first, second = volumes.State(state_path, clock), volumes.State(state_path, clock)
    assert second.dataset("old") == volumes.Dataset("old", "A")
    record, created = first.claim("new", "B", creating=True)
    assert created and second.dataset("new").creating(clock())
    first.close()
    second.close()


def test_a_transaction_that_fails_changes_nothing(state):
    state.claim("web", "A")
    with pytest.raises(sqlite3.IntegrityError), state._transaction() as db:
        db.execute("UPDATE datasets SET host = 'B' WHERE name = 'web'")
        db.execute("INSERT INTO datasets (name, host, created) VALUES ('web', 'C', 0)")
    assert state.dataset("web").host == "A"


# -- whole hook calls, against in-memory engines ----------------------------------------------


class FakeEngine:
    """Enough of a Docker Engine for the adapter: volumes (content as bytes), containers that
    mount one volume, archives, and injected failures."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.volumes: dict[str, bytes] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.images = {"busybox"}
        self.down = False
        self.failing: list[str] = []  # fnmatch patterns of "METHOD /path"
        self.calls: list[str] = []
        self.gate: defer.Deferred | None = None
        #: fnmatch patterns of "METHOD /path" whose calls wait until their Deferred fires.
        self.holds: dict[str, defer.Deferred] = {}

    def add_container(self, name: str, volume: str, state: str = "running",
                      driver: str = "local", more: tuple[tuple[str, str], ...] = ()) -> None:
        """A container mounting ``volume`` of ``driver`` (and the (volume, driver) pairs of
        ``more``); a driver's volume has no local volume of its own here."""
        mounts = [(volume, driver), *more]
        for mounted, by in mounts:
            if by == "local":
                self.volumes.setdefault(mounted, b"")
        self.containers[uuid.uuid4().hex] = {
            "Name": name, "Volume": volume, "State": state, "Labels": {},
            "Mounts": [{"Type": "volume", "Name": mounted, "Driver": by} for mounted, by in mounts]}

    def transfer_containers(self) -> list[dict[str, Any]]:
        return [c for c in self.containers.values() if volumes.HELPER_LABEL in c["Labels"]]

    def _check(self, method: str, path: str) -> None:
        what = f"{method} {path}"
        self.calls.append(what)
        if self.down:
            raise EngineError(502, f"Docker Engine at {self.address} unreachable: "
                                   "ConnectionRefusedError: refused")
        if any(fnmatch.fnmatch(what, pattern) for pattern in self.failing):
            raise EngineError(500, f"injected failure of {what}")

    def request(self, method: str, path: str, query: Any = None, body: Any = None,
                data: Any = None, content_type: str = "application/x-tar") -> defer.Deferred:
        def call(_: Any = None) -> defer.Deferred:
            return defer.maybeDeferred(self._request, method, path, query or {}, body, data)

        held = [hold for pattern, hold in self.holds.items()
                if fnmatch.fnmatch(f"{method} {path}", pattern)]
        if not held:
            return call()
        answer: defer.Deferred = defer.Deferred()
        # Made only once released, so that nothing of the call happens while it is held.
        held[0].addCallback(lambda _: call().chainDeferred(answer) and None)
        return answer

    def _request(self, method: str, path: str, query: dict, body: Any, data: Any) -> Any:
        self._check(method, path)
        parts = path.strip("/").split("/")
        if parts[0] == "volumes":
            if method == "POST" and parts[1] == "create":
                self.volumes.setdefault(body["Name"], b"")
                return {"Name": body["Name"]}
            name = parts[1]
            if name not in self.volumes:
                raise EngineError(404, f"get {name}: no such volume")
            if method == "GET":
                return {"Name": name}
            if method == "DELETE":
                users = [c for c in self.containers.values()
                         if any(m["Name"] == name and m["Driver"] == "local"
                                for m in c["Mounts"])]
                if users:
                    raise EngineError(409, f"remove {name}: volume is in use")
                del self.volumes[name]
                return None
        if parts[0] == "containers":
            if parts[1] == "json":
                wanted = query["filters"]["volume"]
                return [{"Id": cid, "Names": ["/" + c["Name"]], "State": c["State"],
                         "Mounts": c["Mounts"]}
                        for cid, c in self.containers.items()
                        if any(m["Name"] in wanted for m in c["Mounts"])]
            if parts[1] == "create":
                if body["Image"] not in self.images:
                    raise EngineError(404, f"No such image: {body['Image']}")
                mount = body["HostConfig"]["Mounts"][0]
                self.volumes.setdefault(mount["Source"], b"")
                cid = uuid.uuid4().hex
                self.containers[cid] = {"Name": cid[:8], "Volume": mount["Source"],
                                        "State": "created", "Labels": body["Labels"],
                                        "ReadOnly": mount["ReadOnly"],
                                        "Mounts": [{"Type": "volume", "Name": mount["Source"],
                                                    "Driver": "local"}]}
                return {"Id": cid, "Warnings": []}
            cid = parts[1]
            if cid not in self.containers:
                raise EngineError(404, f"No such container: {cid}")
            if method == "DELETE":
                del self.containers[cid]
                return None
            if method == "PUT" and parts[2] == "archive":
                container = self.containers[cid]
                assert not container["ReadOnly"] and query == {"path": "/"}
                # The archive lands in whatever the volume held: a stale copy would show.
                self.volumes[container["Volume"]] += data.read()
                return None
        raise AssertionError(f"unexpected call {method} {path}")

    def download(self, path: str, sink: Any, query: Any = None) -> defer.Deferred:
        d = defer.maybeDeferred(self._download, path, sink, query)
        if self.gate is not None:
            gate, d2 = self.gate, defer.Deferred()
            gate.addCallback(lambda _: d.chainDeferred(d2))
            return d2
        return d

    def _download(self, path: str, sink: Any, query: Any) -> int:
        self._check("GET", path)
        assert query == {"path": volumes.MOUNT_POINT}
        cid = path.split("/")[2]
        data = self.volumes[self.containers[cid]["Volume"]]
        sink.write(data)
        return len(data)


class Cluster:
    """Hosts A, B (and C) with fake engines, one state file, and an adapter per host."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.engines = {h: FakeEngine(f"unix:///run/{h}.sock") for h in "ABC"}
        by_address = {e.address: e for e in self.engines.values()}
        self.state = volumes.State(path, clock)
        self.apps = {}
        for host, engine in self.engines.items():
            self.state.register_host(host, engine.address)
            own = volumes.Volumes(volumes.State(path, clock), host, engine.address,
                                  connect=lambda address, timeout: by_address[address])
            self.apps[host] = volumes.build(own)

    def create(self, host: str, body: Any) -> defer.Deferred:
        request = ClientRequest("POST", "/v1.41/containers/create", json.dumps(body))
        return self.apps[host].handle(pre_hook_call(request))

    def run(self, host: str, *binds: str) -> tuple[int, Any]:
        status, answer = fired(self.create(host, {"Image": "busybox",
                                                  "HostConfig": {"Binds": list(binds)}}))
        if status != 200:
            return status, json.loads(answer)["message"]
        sent = ClientRequest("POST", "/v1.41/containers/create", None)
        return status, json.loads(parse_pre_hook_answer(answer, sent).body)


def fired(d: defer.Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def cluster(state_path, clock):
    return Cluster(state_path, clock)


def test_an_unknown_dataset_is_created_on_the_asking_host(cluster):
    status, body = cluster.run("A", "/flocker/web:/data:ro")
    assert status == 200
    assert body["HostConfig"]["Binds"] == ["flocker-web:/data:ro"]
    assert cluster.state.dataset("web").host == "A"
    assert "flocker-web" in cluster.engines["A"].volumes
    assert "flocker-web" not in cluster.engines["B"].volumes


def test_a_create_without_datasets_passes_unchanged(cluster):
    body = '{"Image": "busybox", "HostConfig": {"Binds": ["/tmp:/tmp"]}}'
    request = ClientRequest("POST", "/v1.41/containers/create?name=x", body)
    status, answer = fired(cluster.apps["A"].handle(pre_hook_call(request)))
    assert status == 200
    assert parse_pre_hook_answer(answer, request) == request
    assert cluster.engines["A"].calls == []


def test_a_dataset_owned_here_is_used_in_place(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"data"
    assert cluster.run("A", "/flocker/web:/other")[0] == 200
    assert cluster.engines["A"].volumes["flocker-web"] == b"data"
    assert not any("archive" in call for call in cluster.engines["A"].calls)


def test_a_dataset_moves_to_the_asking_host(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"hello"
    status, body = cluster.run("B", "/flocker/web:/data")
    assert status == 200, body
    assert body["HostConfig"]["Binds"] == ["flocker-web:/data"]
    assert cluster.engines["B"].volumes["flocker-web"] == b"hello"
    assert "flocker-web" not in cluster.engines["A"].volumes, "the old copy is removed"
    record = cluster.state.dataset("web")
    assert (record.host, record.moving_to) == ("B", None)
    for engine in cluster.engines.values():
        assert engine.transfer_containers() == []


def test_a_moved_dataset_moves_back_without_merging_an_old_copy(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"one"
    cluster.run("B", "/flocker/web:/data")
    cluster.engines["B"].volumes["flocker-web"] = b"two"
    cluster.engines["A"].volumes["flocker-web"] = b"stale"
    assert cluster.run("A", "/flocker/web:/data")[0] == 200
    assert cluster.engines["A"].volumes["flocker-web"] == b"two"


@pytest.mark.parametrize(("state", "words"), [
    ("running", "in use on host A by running container web-server"),
    ("exited", "attached on host A to container web-server (exited)"),
])
def test_a_dataset_a_container_uses_does_not_move(cluster, state, words):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].add_container("web-server", "flocker-web", state)
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 409
    assert message.startswith(f"dataset web is {words}: it cannot move to host B")
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")
    assert "flocker-web" not in cluster.engines["B"].volumes


DRIVER = "powerstrip-volumes"


@pytest.mark.parametrize("state", ["exited", "created", "dead"])
def test_a_stopped_container_using_the_dataset_through_the_driver_does_not_block_a_move(
        cluster, state):
    # With Swarm: a service's task rescheduled from A to B leaves its old container on A.
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"hello"
    cluster.engines["A"].add_container("store.1.old", "web", state, driver=DRIVER)
    status, body = cluster.run("B", "/flocker/web:/data")
    assert status == 200, body
    assert cluster.engines["B"].volumes["flocker-web"] == b"hello"
    assert cluster.state.dataset("web").host == "B"
    assert "flocker-web" not in cluster.engines["A"].volumes


@pytest.mark.parametrize(("state", "words"), [
    ("running", "in use on host A by running container store.1.old: it cannot move to host B "
                "while that container runs"),
    ("paused", "in use on host A by container store.1.old (paused): it cannot move to host B "
               "until that container stops"),
    ("restarting", "in use on host A by container store.1.old (restarting)"),
])
def test_a_container_running_on_the_dataset_through_the_driver_blocks_a_move(
        cluster, state, words):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].add_container("store.1.old", "web", state, driver=DRIVER)
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 409
    assert message.startswith(f"dataset web is {words}")
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")


@pytest.mark.parametrize("mounts", [
    pytest.param((("web", DRIVER), ("flocker-web", "local")), id="the hook's volume too"),
    pytest.param((("web", "local"),), id="a local volume of the dataset's name"),
])
def test_a_stopped_container_not_only_on_the_driver_still_blocks_a_move(cluster, mounts):
    cluster.run("A", "/flocker/web:/data")
    (volume, driver), *more = mounts
    cluster.engines["A"].add_container("old", volume, "exited", driver=driver, more=tuple(more))
    status, message = cluster.run("B", "/flocker/web:/data")
    assert (status, message) == (409, "dataset web is attached on host A to container old "
                                      "(exited): it cannot move to host B until that container "
                                      "is removed")


def test_a_dataset_a_stopped_container_mounts_through_the_driver_is_not_removed(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].add_container("old", "web", "exited", driver=DRIVER)
    driver = cluster.apps["B"].drivers["VolumeDriver"]
    failure = fired(defer.ensureDeferred(driver.call("Remove", {"Name": "web"})))
    assert failure.value.status == 409
    assert "attached on host A to container old (exited): it cannot be removed" in \
        failure.value.message
    assert "flocker-web" in cluster.engines["A"].volumes


def test_an_unreachable_owner_fails_closed(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].down = True
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 502
    assert message.startswith("dataset web: cannot list the containers using it on host A "
                              "(engine unix:///run/A.sock): Docker Engine at")
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")
    assert "flocker-web" not in cluster.engines["B"].volumes


@pytest.mark.parametrize(("host", "pattern", "step"), [
    ("A", "GET /containers/*/archive", "download the volume's archive on host A"),
    ("B", "PUT /containers/*/archive", "upload the volume's archive on host B"),
    ("B", "POST /containers/create", "create a transfer container on host B"),
])
def test_a_failed_transfer_cleans_up_and_changes_nothing(cluster, host, pattern, step):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"precious"
    cluster.engines[host].failing.append(pattern)
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 502
    assert message.startswith(f"dataset web: cannot {step}")
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")
    assert cluster.engines["A"].volumes["flocker-web"] == b"precious"
    assert "flocker-web" not in cluster.engines["B"].volumes, "no partial copy is left"
    for engine in cluster.engines.values():
        assert engine.transfer_containers() == []
    # Once the fault is gone, the same request moves it.
    cluster.engines[host].failing.clear()
    assert cluster.run("B", "/flocker/web:/data")[0] == 200
    assert cluster.engines["B"].volumes["flocker-web"] == b"precious"


def test_a_missing_helper_image_fails_closed(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].images.clear()
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 502
    assert "cannot create a transfer container on host A" in message
    assert "No such image: busybox" in message


def test_an_old_copy_that_cannot_be_removed_does_not_undo_the_move(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"x"
    cluster.engines["A"].failing.append("DELETE /volumes/*")
    assert cluster.run("B", "/flocker/web:/data")[0] == 200
    assert cluster.state.dataset("web").host == "B"
    assert cluster.engines["A"].transfer_containers() == []


def test_a_dataset_whose_volume_vanished_is_not_replaced_by_an_empty_one(cluster):
    cluster.run("A", "/flocker/web:/data")
    del cluster.engines["A"].volumes["flocker-web"]
    status, message = cluster.run("B", "/flocker/web:/data")
    assert status == 502
    assert message == ("dataset web is recorded on host A, but its volume flocker-web is not "
                       "there (unix:///run/A.sock)")


def test_an_owner_without_an_engine_address_fails_closed(cluster):
    cluster.state.claim("web", "Z")
    status, message = cluster.run("B", "/flocker/web:/data")
    assert (status, message) == (
        502, "dataset web is on host Z, which has not registered an engine address")


def test_a_dataset_held_by_another_move_is_refused(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.state.begin_move("web", "A", "C")
    status, message = cluster.run("B", "/flocker/web:/data")
    assert (status, message) == (
        409, "dataset web is being moved to host C; try again once the move is done")
    status, message = cluster.run("A", "/flocker/web:/data")
    assert status == 409 and "being moved to host C" in message


def test_a_new_dataset_whose_volume_cannot_be_made_is_not_recorded(cluster):
    cluster.engines["A"].failing.append("POST /volumes/create")
    status, message = cluster.run("A", "/flocker/web:/data")
    assert status == 502
    assert message.startswith("dataset web: cannot create the volume on host A")
    assert cluster.state.dataset("web") is None


def test_a_dataset_another_host_is_creating_is_refused_until_it_is_made(cluster, clock):
    cluster.engines["A"].holds["POST /volumes/create"] = made = defer.Deferred()
    creating = cluster.create("A", {"Image": "busybox",
                                    "HostConfig": {"Binds": ["/flocker/web:/data"]}})
    assert cluster.state.dataset("web").creating(clock())
    status, message = cluster.run("B", "/flocker/web:/data")
    assert (status, message) == (409, "dataset web is being created on host A at this moment; "
                                      "try again once it is made")
    assert cluster.engines["B"].calls == [], "nothing was tried on B"
    made.callback(None)
    assert fired(creating)[0] == 200
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")
    # Once made, asking for it on B moves it, as any dataset.
    cluster.engines["A"].volumes["flocker-web"] = b"fresh"
    assert cluster.run("B", "/flocker/web:/data")[0] == 200
    assert cluster.engines["B"].volumes["flocker-web"] == b"fresh"
    assert cluster.state.dataset("web").host == "B"


def test_a_create_left_unfinished_by_this_host_is_finished(cluster, clock):
    cluster.state.claim("web", "A", creating=True)  # A's adapter died before making the volume
    assert cluster.run("A", "/flocker/web:/data")[0] == 200
    assert cluster.state.dataset("web") == volumes.Dataset("web", "A")
    assert "flocker-web" in cluster.engines["A"].volumes


def test_a_create_whose_maker_died_after_making_the_volume_moves_once_it_expires(cluster, clock):
    cluster.state.claim("web", "A", creating=True)
    cluster.engines["A"].volumes["flocker-web"] = b"made"
    assert cluster.run("B", "/flocker/web:/data")[0] == 409
    clock.now += volumes.CREATE_SECONDS + 1
    assert cluster.run("B", "/flocker/web:/data")[0] == 200
    assert cluster.engines["B"].volumes["flocker-web"] == b"made"


def test_a_bad_dataset_name_is_refused_before_anything_happens(cluster):
    status, message = cluster.run("A", "/flocker/ok:/a", "/flocker/bad$name:/b")
    assert status == 400
    assert "'bad$name' is not a valid dataset name" in message
    assert cluster.state.datasets() == []
    assert cluster.engines["A"].calls == []


def test_requests_for_one_dataset_are_served_one_at_a_time(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"hello"
    cluster.engines["A"].gate = gate = defer.Deferred()
    body = {"Image": "busybox", "HostConfig": {"Binds": ["/flocker/web:/data"]}}
    first, second = cluster.create("B", body), cluster.create("B", body)
    assert cluster.state.dataset("web").moving_to == "B"
    gate.callback(None)
    assert fired(first)[0] == 200 and fired(second)[0] == 200
    downloads = [c for c in cluster.engines["A"].calls if c.startswith("GET /containers/")
                 and c.endswith("/archive")]
    assert len(downloads) == 1, "the second request found the dataset already here"
    assert cluster.engines["B"].volumes["flocker-web"] == b"hello"


def test_mounts_move_too(cluster):
    cluster.run("A", "/flocker/web:/data")
    cluster.engines["A"].volumes["flocker-web"] = b"hello"
    body = {"Image": "busybox", "HostConfig": {"Mounts": [
        {"Type": "bind", "Source": "/flocker/web", "Target": "/data", "ReadOnly": True}]}}
    status, answer = fired(cluster.create("B", body))
    assert status == 200
    sent = ClientRequest("POST", "/v1.41/containers/create", None)
    rewritten = json.loads(parse_pre_hook_answer(answer, sent).body)
    assert rewritten["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Source": "flocker-web", "Target": "/data", "ReadOnly": True}]
    assert cluster.engines["B"].volumes["flocker-web"] == b"hello"


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "words"), [
    (["--docker", "nonsense"], "cannot read address"),
    (["--prefix", "/"], "the prefix must be an absolute directory"),
    (["--host-name", " A"], "--host-name must be a name"),
])
def test_bad_command_lines_are_refused(tmp_path, capsys, extra, words):
    argv = ["--listen", "127.0.0.1:0", "--host-name", "A", "--docker", "unix:///a.sock",
            "--state", str(tmp_path / "s.sqlite"), *extra]
    with pytest.raises(SystemExit) as exited:
        volumes.main(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["/flocker/a:/a", "/flocker/b:/b:ro", "/tmp:/t", "v:/v",
                                 "/flocker/a:/c"]), max_size=6))
def test_rewrite_create_names_each_dataset_once_in_order(binds):
    _, names = volumes.rewrite_create({"HostConfig": {"Binds": binds}}, PREFIX)
    expected: list[str] = []
    for bind in binds:
        if bind.startswith("/flocker/") and bind[9] not in expected:
            expected.append(bind[9])
    assert names == expected
