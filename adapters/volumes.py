#!/usr/bin/env python3
"""The volumes adapter: portable datasets, in the spirit of Flocker.

A pre-hook on container create turns a bind of ``/flocker/<name>`` (``-v /flocker/web:/data``,
or ``--mount type=bind,source=/flocker/web,target=/data``) into the named Docker volume
``flocker-<name>``, created on demand. One SQLite file, shared by the adapters of every host,
records which host owns each dataset and how to reach each host's Docker Engine. When a
container asks for a dataset another host owns, the data moves here first, through the Docker
Engine API of both hosts, and the old host's copy is removed; then the create goes on. See
``docs/volumes-adapter.md``.

::

    python adapters/volumes.py --listen 127.0.0.1:0 --host-name A \\
        --docker unix:///var/run/docker.sock --state /shared/datasets.sqlite
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import re
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer

from powerstrip.adapter import Adapter, Refuse, Request
from powerstrip.core.paths import clean_path
from powerstrip.kit.engine_api import EngineClient, EngineError
from powerstrip.kit.etcd import StoreUnavailable
from powerstrip.kit.gojson import go_fold_equal, go_keys, go_value
from powerstrip.proxy.addresses import AddressError, parse_address

__all__ = [
    "BadBind",
    "BeingCreated",
    "Dataset",
    "MoveInProgress",
    "OwnerChanged",
    "State",
    "VolumeDriver",
    "Volumes",
    "build",
    "check_name",
    "dataset_of",
    "main",
    "rewrite_bind",
    "rewrite_create",
    "rewrite_mount",
    "volume_name",
]

log = logging.getLogger("powerstrip.volumes")

#: Docker volume names must match ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``; with this prefix in front,
#: any dataset name below makes one.
VOLUME_PREFIX = "flocker-"
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Labels on what the adapter creates, so an operator can tell its volumes and containers apart.
DATASET_LABEL = "powerstrip.dataset"
HELPER_LABEL = "powerstrip.volumes.transfer"
#: Where transfer containers mount the volume. The archive GET of this path yields entries under
#: ``v/``, and a PUT of that archive at ``/`` lands them back in the volume, the volume root's own
#: mode and owner included.
MOUNT_POINT = "/v"
#: Bind modes that mean something for a volume. Propagation modes only apply to host
#: directories, and Docker rejects them on volumes.
VOLUME_MODES = frozenset({"ro", "rw", "z", "Z", "nocopy"})
PROPAGATION = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
#: Engine calls that move no data: long enough for a slow daemon, short enough that the client
#: hears of an unreachable host well within the proxy's adapter timeout.
CONTROL_TIMEOUT = 30.0
#: The archive download and upload: a large dataset takes its time. A move the client has
#: stopped waiting for still completes, and the next request finds the dataset in place.
TRANSFER_TIMEOUT = 900.0
#: How long a move holds a dataset against other hosts. Renewed between download and upload; a
#: lease left by a crashed adapter expires after this, or is taken over by the same host.
LEASE_SECONDS = 1000.0
#: How long a new dataset's record says its volume is being made, so that other hosts asking
#: meanwhile are refused instead of moving what is not there yet. Lifted as soon as the volume
#: exists; the limit only matters when the creating adapter dies mid-create.
CREATE_SECONDS = 30
#: Times a request re-reads ownership that changed under it before giving up.
ATTEMPTS = 3


# -- binds and mounts (pure) ------------------------------------------------------------------


class BadBind(ValueError):
    """A bind or mount that names a dataset but cannot be used as one; answered with 400."""


def volume_name(dataset: str) -> str:
    """The Docker volume that holds ``dataset`` on whichever host owns it."""
    return VOLUME_PREFIX + dataset


def check_name(name: str) -> str:
    """``name`` if it is a valid dataset name, else ``BadBind`` saying what is allowed."""
    if not DATASET_NAME.fullmatch(name):
        raise BadBind(
            f"{name!r} is not a valid dataset name: use 1 to 128 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return name


def normalise_prefix(prefix: str) -> str:
    """The directory under which bind sources name datasets, cleaned; ValueError if unusable."""
    clean = clean_path(prefix) if prefix.startswith("/") else "/"
    if clean == "/":
        raise ValueError(f"the prefix must be an absolute directory other than /, not {prefix!r}")
    return clean


def dataset_of(source: Any, prefix: str) -> str | None:
    """The dataset a bind source names (``/flocker/web`` names ``web``), None when the source is
    not under ``prefix``; ``BadBind`` when it is, but is not a valid dataset name."""
    if not isinstance(source, str):
        return None
    if not source.startswith("/"):
        return None
    # Docker cleans bind sources before use: /flocker//web/ binds what /flocker/web does.
    clean = clean_path(source)
    if not clean.startswith(prefix + "/"):
        return None
    return check_name(clean[len(prefix) + 1:])


def _check_mode(mode: str, bind: str) -> None:
    for option in mode.split(","):
        if option in PROPAGATION:
            raise BadBind(
                f"bind {bind!r}: propagation {option!r} applies to host directories, "
                "not to datasets"
            )
        if option not in VOLUME_MODES:
            raise BadBind(
                f"bind {bind!r}: unknown mode {option!r} "
                f"(a dataset takes {', '.join(sorted(VOLUME_MODES))})"
            )


def rewrite_bind(bind: Any, prefix: str) -> tuple[Any, str | None]:
    """A ``HostConfig.Binds`` entry with a dataset source rewritten to the dataset's volume, and
    the dataset's name; other entries come back unchanged with None."""
    if not isinstance(bind, str):
        return bind, None
    parts = bind.split(":")
    name = dataset_of(parts[0], prefix)
    if name is None:
        return bind, None
    if len(parts) not in (2, 3) or not parts[1]:
        raise BadBind(f"bind {bind!r}: expected SOURCE:TARGET or SOURCE:TARGET:MODE")
    if len(parts) == 3:
        _check_mode(parts[2], bind)
    return ":".join([volume_name(name), *parts[1:]]), name


def rewrite_mount(mount: Any, prefix: str) -> tuple[Any, str | None]:
    """A ``HostConfig.Mounts`` entry of type bind with a dataset source rewritten to a mount of
    the dataset's volume, and the dataset's name; other entries come back unchanged with None."""
    if not isinstance(mount, dict) or go_value(mount, "Type") != "bind":
        return mount, None
    name = dataset_of(go_value(mount, "Source"), prefix)
    if name is None:
        return mount, None
    options = go_value(mount, "BindOptions")
    if isinstance(options, dict) and go_value(options, "Propagation"):
        raise BadBind(
            f"mount of {go_value(mount, 'Source')!r}: bind propagation applies to host "
            "directories, not to datasets"
        )
    # Docker refuses BindOptions on a volume mount; what is left of them means nothing there.
    dropped = ("Type", "Source", "BindOptions")
    rewritten = {key: value for key, value in mount.items()
                 if not any(go_fold_equal(key, name) for name in dropped)}
    return {"Type": "volume", "Source": volume_name(name), **rewritten}, name


def rewrite_create(body: Any, prefix: str) -> tuple[Any, list[str]]:
    """A container create body with every dataset bind and mount rewritten to its volume, and
    the datasets it names, each once, in order of appearance. ``body`` is not changed."""
    if not isinstance(body, dict):
        return body, []
    body = copy.deepcopy(body)
    names: list[str] = []

    def note(name: str | None) -> None:
        if name is not None and name not in names:
            names.append(name)

    for host_key in go_keys(body, "HostConfig"):
        host_config = body[host_key]
        if not isinstance(host_config, dict):
            continue
        for field, rewrite in (("Binds", rewrite_bind), ("Mounts", rewrite_mount)):
            for key in go_keys(host_config, field):
                if isinstance(host_config[key], list):
                    rewritten = [rewrite(item, prefix) for item in host_config[key]]
                    host_config[key] = [item for item, _ in rewritten]
                    for _, name in rewritten:
                        note(name)
    return body, names


# -- the state file ---------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    registered REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    created REAL NOT NULL,
    moved REAL,
    moving_to TEXT,
    lease TEXT,
    lease_until REAL,
    creating_until REAL
);
"""
#: Columns added since the first state files, with their types: added to an older file on open.
_ADDED_COLUMNS = {"datasets": {"creating_until": "REAL"}}


class OwnerChanged(Exception):  # noqa: N818 - a condition, read as such
    """The dataset's owner is no longer the one a move was planned from."""


class MoveInProgress(Exception):  # noqa: N818
    """Another host is moving the dataset; ``to`` is that host."""

    def __init__(self, name: str, to: str) -> None:
        super().__init__(f"dataset {name} is being moved to host {to}")
        self.to = to


class BeingCreated(Exception):  # noqa: N818
    """The dataset's owner, ``host``, is still making its volume: there is nothing to move."""

    def __init__(self, name: str, host: str) -> None:
        super().__init__(f"dataset {name} is being created on host {host} at this moment")
        self.host = host


@dataclass(frozen=True)
class Dataset:
    """A dataset's record: the host that owns it, during a move where it is going, and while
    its owner makes its volume, until when that may take."""

    name: str
    host: str
    moving_to: str | None = None
    lease_until: float | None = None
    creating_until: float | None = None

    def moving(self, now: float) -> str | None:
        """The host a move under way is taking the dataset to, None if none is."""
        if self.moving_to is not None and self.lease_until is not None and self.lease_until > now:
            return self.moving_to
        return None

    def creating(self, now: float) -> bool:
        """Whether its owner is making its volume at ``now`` (so far, the dataset is not there
        to be moved)."""
        return self.creating_until is not None and self.creating_until > now


class State:
    """Hosts and datasets in one SQLite file, shared by the adapters of every host.

    Every change is one short ``BEGIN IMMEDIATE`` transaction, so adapters in other processes
    see either all of it or none of it, and two of them never both take the same dataset.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """Open (and create, if need be) the state file at ``path``."""
        self.path = str(path)
        self.clock = clock
        # Autocommit mode: transactions are begun explicitly, IMMEDIATE, so a writer never has
        # to upgrade a read lock and deadlock against another.
        self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a file made by an older adapter lacks. In one transaction, so that
        adapters opening the same old file at once add each column once."""
        with self._transaction() as db:
            for table, columns in _ADDED_COLUMNS.items():
                have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the file."""
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # hosts

    def register_host(self, name: str, engine: str) -> str | None:
        """Record how to reach host ``name``'s engine; gives the address it replaced, if any."""
        with self._transaction() as db:
            row = db.execute("SELECT engine FROM hosts WHERE name = ?", (name,)).fetchone()
            db.execute(
                "INSERT INTO hosts (name, engine, registered) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET engine = excluded.engine, "
                "registered = excluded.registered",
                (name, engine, self.clock()),
            )
        previous = row["engine"] if row else None
        return previous if previous != engine else None

    def engine_of(self, host: str) -> str | None:
        """The engine address host ``host`` registered, None if it never did."""
        row = self.db.execute("SELECT engine FROM hosts WHERE name = ?", (host,)).fetchone()
        return row["engine"] if row else None

    def hosts(self) -> dict[str, str]:
        """Every registered host and its engine address."""
        return {row["name"]: row["engine"] for row in self.db.execute("SELECT * FROM hosts")}

    # datasets

    @staticmethod
    def _dataset(row: sqlite3.Row) -> Dataset:
        return Dataset(row["name"], row["host"], row["moving_to"], row["lease_until"],
                       row["creating_until"])

    def dataset(self, name: str) -> Dataset | None:
        """The record of dataset ``name``, None if no host has it."""
        row = self.db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return self._dataset(row) if row else None

    def datasets(self) -> list[Dataset]:
        """Every dataset's record, by name."""
        rows = self.db.execute("SELECT * FROM datasets ORDER BY name")
        return [self._dataset(row) for row in rows]

    def claim(self, name: str, host: str, creating: bool = False) -> tuple[Dataset, bool]:
        """Make ``host`` the owner of dataset ``name`` if no host owns it yet. Gives the record
        as it then stands and whether this call created it. With ``creating``, a record this
        call creates also says, until ``finish_create`` or for ``CREATE_SECONDS``, that
        ``host`` is making the dataset's volume (``Dataset.creating``)."""
        now = self.clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO datasets (name, host, created, creating_until) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, host, now, now + CREATE_SECONDS if creating else None),
            )
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return self._dataset(row), cursor.rowcount == 1

    def finish_create(self, name: str, host: str) -> None:
        """Record that dataset ``name``'s volume now exists on ``host``, its owner: other hosts
        may move it from now on."""
        with self._transaction() as db:
            db.execute("UPDATE datasets SET creating_until = NULL WHERE name = ? AND host = ?",
                       (name, host))

    def release(self, name: str, host: str) -> bool:
        """Forget dataset ``name`` if ``host`` owns it and no move holds it (undoing a claim
        whose volume could not be made); whether it did."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM datasets WHERE name = ? AND host = ? "
                "AND (lease_until IS NULL OR lease_until <= ?)",
                (name, host, self.clock()),
            )
        return cursor.rowcount == 1

    def begin_move(self, name: str, owner: str, to: str) -> str:
        """Hold dataset ``name``, owned by ``owner``, for a move to ``to``; gives the lease's
        token. ``OwnerChanged`` if ``owner`` no longer owns it; ``BeingCreated`` while its
        owner is still making its volume; ``MoveInProgress`` if another host holds it. A lease
        held for ``to`` itself is stale (one adapter runs per host and it serialises its own
        moves), so it is taken over."""
        token = uuid.uuid4().hex
        now = self.clock()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
            if row is None or row["host"] != owner:
                raise OwnerChanged(name)
            if self._dataset(row).creating(now):
                raise BeingCreated(name, owner)
            moving = self._dataset(row).moving(now)
            if moving is not None and moving != to:
                raise MoveInProgress(name, moving)
            db.execute(
                "UPDATE datasets SET moving_to = ?, lease = ?, lease_until = ? WHERE name = ?",
                (to, token, now + LEASE_SECONDS, name),
            )
        return token

    def renew(self, name: str, token: str) -> bool:
        """Extend the lease ``token`` on dataset ``name``; False if it is no longer held."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE datasets SET lease_until = ? WHERE name = ? AND lease = ?",
                (self.clock() + LEASE_SECONDS, name, token),
            )
        return cursor.rowcount == 1

    def finish_move(self, name: str, token: str, owner: str, to: str) -> bool:
        """Hand dataset ``name`` from ``owner`` to ``to`` and drop the lease, if the lease
        ``token`` still holds it and ``owner`` still owns it; whether it did."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE datasets SET host = ?, moved = ?, moving_to = NULL, lease = NULL, "
                "lease_until = NULL WHERE name = ? AND host = ? AND lease = ?",
                (to, self.clock(), name, owner, token),
            )
        return cursor.rowcount == 1

    def abandon_move(self, name: str, token: str) -> None:
        """Drop the lease ``token`` on dataset ``name``, if it still holds it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE datasets SET moving_to = NULL, lease = NULL, lease_until = NULL "
                "WHERE name = ? AND lease = ?",
                (name, token),
            )


class EtcdState:
    """The same records as ``State``, in etcd (``--state etcd://HOST:PORT[,...]``), for hosts
    that share no file: every method is a coroutine, every change one transaction guarded by
    the revisions it read, and a move's lease an etcd lease, so a host that dies mid-move
    releases the dataset after ``lease_seconds`` without anyone cleaning up after it.

    Keys, under ``/powerstrip/volumes/``: ``hosts/NAME`` (the engine address),
    ``datasets/NAME`` (``{"host": ...}``), ``moves/NAME`` (``{"to", "token"}``, on the
    move's lease) and, while a new dataset's volume is being made, ``creating/NAME``
    (``{"host": ...}``, put with the dataset's record, on a lease of ``create_seconds`` so that
    a host that dies mid-create holds off the others only that long). A store that does not
    answer raises ``StoreUnavailable`` naming it.
    """

    PREFIX = "/powerstrip/volumes/"

    def __init__(self, url: str, lease_seconds: int = int(LEASE_SECONDS),
                 clock: Callable[[], float] = time.time,
                 create_seconds: int = CREATE_SECONDS) -> None:
        from powerstrip.kit.etcd import Etcd

        self.url = url
        self.etcd = Etcd(url)
        self.lease_seconds = lease_seconds
        self.create_seconds = create_seconds
        self.clock = clock
        self._leases: dict[str, int] = {}

    def _key(self, kind: str, name: str) -> str:
        return f"{self.PREFIX}{kind}/{name}"

    async def register_host(self, name: str, engine: str) -> str | None:
        """As ``State.register_host``."""
        previous = await self.etcd.get(self._key("hosts", name))
        await self.etcd.put(self._key("hosts", name), engine)
        old = previous.value if previous else None
        return old if old != engine else None

    async def engine_of(self, host: str) -> str | None:
        """As ``State.engine_of``."""
        entry = await self.etcd.get(self._key("hosts", host))
        return entry.value if entry else None

    async def hosts(self) -> dict[str, str]:
        """As ``State.hosts``."""
        start = len(self._key("hosts", ""))
        return {e.key[start:]: e.value for e in await self.etcd.prefix(self._key("hosts", ""))}

    async def _read(self, name: str) -> tuple[Any, Any, Any]:
        # The record first: its creating key is put with it, so a record read, then no creating
        # key, is of a dataset whose volume was made (or whose maker died making it).
        dataset = await self.etcd.get(self._key("datasets", name))
        move = await self.etcd.get(self._key("moves", name))
        creating = await self.etcd.get(self._key("creating", name))
        return dataset, move, creating

    @staticmethod
    def _record(name: str, dataset: Any, move: Any, creating: Any = None) -> Dataset:
        host = json.loads(dataset.value)["host"]
        # etcd expires the leases; while a key exists, what it says holds.
        until = (math.inf if creating is not None and json.loads(creating.value)["host"] == host
                 else None)
        if move is None:
            return Dataset(name, host, creating_until=until)
        return Dataset(name, host, json.loads(move.value)["to"], math.inf, until)

    async def dataset(self, name: str) -> Dataset | None:
        """As ``State.dataset``."""
        dataset, move, creating = await self._read(name)
        return None if dataset is None else self._record(name, dataset, move, creating)

    async def datasets(self) -> list[Dataset]:
        """As ``State.datasets``."""
        start = len(self._key("datasets", ""))
        found = await self.etcd.prefix(self._key("datasets", ""))
        moves = await self._by_name("moves")
        creating = await self._by_name("creating")
        return [self._record(e.key[start:], e, moves.get(e.key[start:]),
                             creating.get(e.key[start:])) for e in found]

    async def _by_name(self, kind: str) -> dict[str, Any]:
        start = len(self._key(kind, ""))
        return {e.key[start:]: e for e in await self.etcd.prefix(self._key(kind, ""))}

    async def claim(self, name: str, host: str, creating: bool = False) -> tuple[Dataset, bool]:
        """As ``State.claim``: the first host to claim a dataset nobody has, wins. With
        ``creating``, the creating key is put in the same transaction, on a lease of
        ``create_seconds``."""
        from powerstrip.kit import etcd

        record = await self.dataset(name)
        if record is not None:
            return record, False  # no lease granted for the usual case, a dataset that exists
        key = self._key("datasets", name)
        value = json.dumps({"host": host})
        lease = await self.etcd.grant(self.create_seconds) if creating else 0
        puts = [etcd.put(key, value)]
        if creating:
            puts.append(etcd.put(self._key("creating", name), value, lease))
        try:
            won = await self.etcd.txn([etcd.created(key, 0)], puts)
        except BaseException:
            await self._revoke(lease)
            raise
        if not won:
            await self._revoke(lease)
        record = await self.dataset(name)
        if record is None:
            # Released between the transaction and the read: as if claimed and gone at once.
            raise OwnerChanged(name)
        return record, won

    async def finish_create(self, name: str, host: str) -> None:
        """As ``State.finish_create``: the creating key is deleted and its lease revoked."""
        from powerstrip.kit import etcd

        creating = await self.etcd.get(self._key("creating", name))
        if creating is None or json.loads(creating.value)["host"] != host:
            return
        await self.etcd.txn([etcd.modified(creating.key, creating.mod_revision)],
                            [etcd.delete(creating.key)])
        await self._revoke(creating.lease)

    async def release(self, name: str, host: str) -> bool:
        """As ``State.release``: only its owner's, and not while a move holds it; a creating
        key goes with the record."""
        from powerstrip.kit import etcd

        dataset, move, creating = await self._read(name)
        if dataset is None or move is not None or json.loads(dataset.value)["host"] != host:
            return False
        done = await self.etcd.txn(
            [etcd.modified(dataset.key, dataset.mod_revision),
             etcd.created(self._key("moves", name), 0)],
            [etcd.delete(dataset.key), etcd.delete(self._key("creating", name))])
        if done and creating is not None:
            await self._revoke(creating.lease)
        return done

    async def begin_move(self, name: str, owner: str, to: str) -> str:
        """As ``State.begin_move``, the lease an etcd lease of ``lease_seconds``."""
        from powerstrip.kit import etcd

        dataset, move, creating = await self._read(name)
        if dataset is None or json.loads(dataset.value)["host"] != owner:
            raise OwnerChanged(name)
        if self._record(name, dataset, move, creating).creating(self.clock()):
            raise BeingCreated(name, owner)
        if move is not None and json.loads(move.value)["to"] != to:
            raise MoveInProgress(name, json.loads(move.value)["to"])
        lease = await self.etcd.grant(self.lease_seconds)
        token = uuid.uuid4().hex
        key = self._key("moves", name)
        held = await self.etcd.txn(
            [etcd.modified(dataset.key, dataset.mod_revision),
             etcd.modified(key, move.mod_revision) if move else etcd.created(key, 0)],
            [etcd.put(key, json.dumps({"to": to, "token": token}), lease)])
        if not held:
            await self.etcd.revoke(lease)
            raise OwnerChanged(name)  # changed meanwhile: the caller looks again
        if move is not None and move.lease:
            await self._revoke(move.lease)  # a stale lease of this host's, taken over
        self._leases[token] = lease
        return token

    async def renew(self, name: str, token: str) -> bool:
        """As ``State.renew``."""
        move = await self.etcd.get(self._key("moves", name))
        lease = self._leases.get(token)
        if move is None or lease is None or json.loads(move.value)["token"] != token:
            return False
        return await self.etcd.keepalive(lease)

    async def finish_move(self, name: str, token: str, owner: str, to: str) -> bool:
        """As ``State.finish_move``."""
        from powerstrip.kit import etcd

        dataset, move, _ = await self._read(name)
        if (dataset is None or move is None or json.loads(move.value)["token"] != token
                or json.loads(dataset.value)["host"] != owner):
            return False
        done = await self.etcd.txn(
            [etcd.modified(dataset.key, dataset.mod_revision),
             etcd.modified(move.key, move.mod_revision)],
            [etcd.put(dataset.key, json.dumps({"host": to})), etcd.delete(move.key)])
        if done:
            await self._revoke(self._leases.pop(token, 0))
        return done

    async def abandon_move(self, name: str, token: str) -> None:
        """As ``State.abandon_move``."""
        from powerstrip.kit import etcd

        move = await self.etcd.get(self._key("moves", name))
        if move is not None and json.loads(move.value)["token"] == token:
            await self.etcd.txn([etcd.modified(move.key, move.mod_revision)],
                                [etcd.delete(move.key)])
        await self._revoke(self._leases.pop(token, 0))

    async def _revoke(self, lease: int) -> None:
        if not lease:
            return
        try:
            await self.etcd.revoke(lease)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("etcd lease %x not revoked (it expires by itself): %s", lease, exc)


def _being_created(exc: BeingCreated) -> str:
    return f"{exc}; try again once it is made"


async def _settled(value: Any) -> Any:
    """A state method's result: SQLite's ``State`` answers at once, ``EtcdState`` later."""
    if inspect.isawaitable(value):
        return await value
    return value


def open_state(where: str) -> State | EtcdState:
    """The state ``--state`` names: ``etcd://HOST:PORT[,...]``, ``sqlite:PATH`` or a PATH."""
    if where.startswith("etcd://"):
        return EtcdState(where)
    return State(where.removeprefix("sqlite:"))


# -- the adapter ------------------------------------------------------------------------------


def _connect(address: str, timeout: float) -> EngineClient:
    return EngineClient(address, timeout=timeout)


#: Container states in which nothing runs, nor is about to (GET /containers/json ``State``).
STOPPED = frozenset({"created", "exited", "dead"})


def _through_driver_only(container: dict[str, Any], name: str) -> bool:
    """Whether ``container`` (an entry of GET /containers/json) has dataset ``name`` only as
    the volume driver's volume ``name``, never as the hook's local volume."""
    mounts = [mount for mount in container.get("Mounts") or []
              if isinstance(mount, dict) and mount.get("Name") in (name, volume_name(name))]
    # No mounts listed (an engine that does not say): not known to be the driver's.
    return bool(mounts) and all(
        mount.get("Name") == name and mount.get("Driver") not in (None, "", "local")
        for mount in mounts)


@dataclass(frozen=True)
class _Host:
    """A host's engine, with a client for control calls and one for archive transfers."""

    name: str
    address: str
    control: Any
    transfer: Any


class Volumes:
    """Datasets for the containers created on host ``host_name``, whose engine is ``docker``.

    ``connect(address, timeout)`` makes an engine client (an ``EngineClient`` unless a test
    substitutes its own).
    """

    def __init__(
        self,
        state: State,
        host_name: str,
        docker: str,
        helper_image: str = "busybox",
        prefix: str = "/flocker",
        connect: Callable[[str, float], Any] = _connect,
    ) -> None:
        self.state = state
        self.host_name = host_name
        self.docker = docker
        self.helper_image = helper_image
        self.prefix = normalise_prefix(prefix)
        self._connect = connect
        self._clients: dict[tuple[str, float], Any] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        #: Whether this host's engine address is in the state (``ready``).
        self.registered = False

    async def ready(self) -> None:
        """Register this host's engine in the state, once."""
        if not self.registered:
            await _settled(self.state.register_host(self.host_name, self.docker))
            self.registered = True

    # -- the hook -------------------------------------------------------------------------

    async def on_create(self, request: Request) -> Request | None:
        """The pre-hook on container create: every dataset the request names is made present
        on this host, and its binds and mounts are rewritten to the dataset's volume."""
        try:
            body, names = rewrite_create(request.json, self.prefix)
        except BadBind as exc:
            raise Refuse(400, str(exc)) from None
        if not names:
            return None
        for name in names:
            await self.ensure(name)
        return request.with_json(body)

    async def ensure(self, name: str) -> None:
        """Make dataset ``name`` present here: claim it when no host has it, move it here when
        another host does. Refuses (``Refuse``) with 409 or 502 when it cannot."""
        lock = self._locks.setdefault(name, defer.DeferredLock())
        await lock.acquire()
        try:
            await self.ready()
            await self._ensure(name)
        except StoreUnavailable as exc:
            # Nothing moved: a copy under way was discarded, and the lease expires in the store.
            raise Refuse(503, f"dataset {name}: {exc}") from None
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(name, None)

    async def _ensure(self, name: str) -> None:
        for _ in range(ATTEMPTS):
            try:
                record, created = await _settled(
                    self.state.claim(name, self.host_name, creating=True))
            except OwnerChanged:
                continue  # claimed and released by another host meanwhile: look again
            if record.host == self.host_name:
                moving = record.moving(self.state.clock())
                if moving is not None and moving != self.host_name:
                    raise Refuse(409, f"dataset {name} is being moved to host {moving}; "
                                      "try again once the move is done")
                await self._create_here(record, created)
                return
            if record.creating(self.state.clock()):
                raise Refuse(409, _being_created(BeingCreated(name, record.host)))
            try:
                await self._move(record)
                return
            except OwnerChanged:
                continue  # moved by someone else meanwhile: look again
        raise Refuse(409, f"dataset {name} kept changing hosts; try again")

    async def _create_here(self, record: Dataset, claimed: bool) -> None:
        name = record.name
        here = self._host(self.host_name, self.docker)
        try:
            # Creating a volume that exists is a no-op that answers it, so no look first.
            await self._create_volume(here, name)
        except Refuse:
            if claimed:
                # No volume, so no dataset: another host asking for it must not try to move it.
                await _settled(self.state.release(name, self.host_name))
            raise
        if record.creating_until is not None:
            # Ours: just claimed, or left by this host's adapter dying mid-create. The volume
            # exists now, so other hosts may move it.
            await _settled(self.state.finish_create(name, self.host_name))
        if claimed:
            log.info("dataset %s: created on host %s", name, self.host_name)

    # -- moving ---------------------------------------------------------------------------

    async def _move(self, record: Dataset) -> None:
        name, volume = record.name, volume_name(record.name)
        engine = await _settled(self.state.engine_of(record.host))
        if engine is None:
            raise Refuse(502, f"dataset {name} is on host {record.host}, which has not "
                              "registered an engine address")
        source = self._host(record.host, engine)
        here = self._host(self.host_name, self.docker)
        try:
            token = await _settled(self.state.begin_move(name, record.host, self.host_name))
        except MoveInProgress as exc:
            raise Refuse(409, f"{exc}; try again once the move is done") from None
        except BeingCreated as exc:
            raise Refuse(409, _being_created(exc)) from None
        started = time.monotonic()
        finished = False
        try:
            await self._refuse_if_used(source, name, f"cannot move to host {self.host_name}")
            exists = await self._call(source, name, "look up the volume", source.control.request(
                "GET", f"/volumes/{volume}"), missing_ok=True)
            if exists is None:
                raise Refuse(502, f"dataset {name} is recorded on host {record.host}, but its "
                                  f"volume {volume} is not there ({source.address})")
            await self._clear_stale(here, name)
            await self._create_volume(here, name)
            try:
                size = await self._copy(source, here, name, token)
                finished = await _settled(
                    self.state.finish_move(name, token, record.host, self.host_name))
                if not finished:
                    raise Refuse(409, f"dataset {name} changed hands while it was being moved "
                                      f"from host {record.host}; try again")
            except BaseException:
                # A partial copy must not pass for the dataset.
                await self._discard(here, name)
                raise
        finally:
            if not finished:
                await _settled(self.state.abandon_move(name, token))
        log.info("dataset %s: moved from host %s to host %s, %d bytes in %.2f s",
                 name, record.host, self.host_name, size, time.monotonic() - started)
        try:
            await source.control.request("DELETE", f"/volumes/{volume}")
        except EngineError as exc:
            # The move stands: this host owns the data now. The old copy is removed before the
            # dataset ever moves back there (see _clear_stale).
            log.warning("dataset %s: old volume %s on host %s not removed: %s",
                        name, volume, record.host, exc.message)

    async def _copy(self, source: _Host, here: _Host, name: str, token: str) -> int:
        """Copy the volume's content from ``source`` to ``here`` through a temporary file;
        gives the archive's size. Transfer containers are removed, whatever happens."""
        made: list[tuple[_Host, str]] = []
        try:
            reader = await self._transfer_container(source, name, made, read_only=True)
            with tempfile.TemporaryFile(prefix="powerstrip-volume-") as spool:
                size = await self._call(source, name, "download the volume's archive",
                                        source.transfer.download(
                                            f"/containers/{reader}/archive", spool,
                                            {"path": MOUNT_POINT}))
                if not await _settled(self.state.renew(name, token)):
                    raise OwnerChanged(name)
                spool.seek(0)
                writer = await self._transfer_container(here, name, made, read_only=False)
                await self._call(here, name, "upload the volume's archive",
                                 here.transfer.request("PUT", f"/containers/{writer}/archive",
                                                       {"path": "/"}, data=spool))
            return size
        finally:
            for host, container in made:
                try:
                    await host.control.request("DELETE", f"/containers/{container}",
                                               {"force": "1"})
                except EngineError as exc:
                    log.warning("dataset %s: transfer container %s on host %s not removed: %s",
                                name, container, host.name, exc.message)

    async def _transfer_container(
        self, host: _Host, name: str, made: list[tuple[_Host, str]], read_only: bool
    ) -> str:
        # Created, never started: the archive endpoints work on created containers, so the data
        # moves without running anything on either host.
        config = {
            "Image": self.helper_image,
            "Cmd": ["true"],
            "Labels": {HELPER_LABEL: name},
            "NetworkDisabled": True,
            "HostConfig": {"Mounts": [{"Type": "volume", "Source": volume_name(name),
                                       "Target": MOUNT_POINT, "ReadOnly": read_only}]},
        }
        created = await self._call(host, name, "create a transfer container",
                                   host.control.request("POST", "/containers/create", body=config))
        made.append((host, created["Id"]))
        return created["Id"]

    async def _refuse_if_used(self, host: _Host, name: str, purpose: str,
                              stopped_driver_users_block: bool = False) -> None:
        """Refuse 409 if a container on ``host`` has the dataset's volume. One that has it as
        the hook's volume blocks running or not: started again, it would run on a copy that is
        no longer the dataset. One that has it only through the volume driver blocks only
        while it runs (or is paused, or restarting), unless ``stopped_driver_users_block``: its
        engine asks the driver to mount it again at its next start, which brings the dataset
        back, or refuses. ``purpose`` completes "it ...", e.g. "cannot move to host B"."""
        # Its volume under either name: the hook's (flocker-NAME) or the volume driver's
        # (NAME, with driver powerstrip-volumes), which mounts the same data.
        users = await self._call(host, name, "list the containers using it", host.control.request(
            "GET", "/containers/json",
            {"all": "1", "filters": {"volume": [volume_name(name), name]}}))
        for container in users or []:
            names = [n.lstrip("/") for n in container.get("Names") or []]
            label = names[0] if names else str(container.get("Id", "?"))[:12]
            state = container.get("State") or "?"
            driver_only = not stopped_driver_users_block and _through_driver_only(container, name)
            if driver_only and state in STOPPED:
                # With Swarm, the task a service rescheduled elsewhere: left here, exited.
                continue
            if state == "running":
                raise Refuse(409, f"dataset {name} is in use on host {host.name} by running "
                                  f"container {label}: it {purpose} while that container runs")
            if driver_only:
                raise Refuse(409, f"dataset {name} is in use on host {host.name} by container "
                                  f"{label} ({state}): it {purpose} until that container stops")
            raise Refuse(409, f"dataset {name} is attached on host {host.name} to container "
                              f"{label} ({state}): it {purpose} until that container is removed")

    async def _clear_stale(self, here: _Host, name: str) -> None:
        """Remove an old copy of the volume left here, so the moved data is not merged into
        it (files deleted since would come back)."""
        volume = volume_name(name)
        found = await self._call(here, name, "look up the volume", here.control.request(
            "GET", f"/volumes/{volume}"), missing_ok=True)
        if found is None:
            return
        # An old copy still attached to a container here: removing it is not ours to decide.
        await self._refuse_if_used(here, name, "cannot move back to host "
                                   f"{here.name}, where an old copy of it is kept")
        await self._call(here, name, "remove the old copy of the volume", here.control.request(
            "DELETE", f"/volumes/{volume}"), missing_ok=True)

    async def _discard(self, here: _Host, name: str) -> None:
        try:
            await here.control.request("DELETE", f"/volumes/{volume_name(name)}")
        except EngineError as exc:
            log.warning("dataset %s: partial copy on host %s not removed: %s",
                        name, here.name, exc.message)

    async def _create_volume(self, host: _Host, name: str) -> None:
        await self._call(host, name, "create the volume", host.control.request(
            "POST", "/volumes/create",
            body={"Name": volume_name(name), "Labels": {DATASET_LABEL: name}}))

    # -- engines --------------------------------------------------------------------------

    def _host(self, name: str, address: str) -> _Host:
        return _Host(name, address, self._client(address, CONTROL_TIMEOUT),
                     self._client(address, TRANSFER_TIMEOUT))

    def _client(self, address: str, timeout: float) -> Any:
        key = (address, timeout)
        if key not in self._clients:
            self._clients[key] = self._connect(address, timeout)
        return self._clients[key]

    async def _call(
        self, host: _Host, name: str, what: str, call: defer.Deferred[Any],
        missing_ok: bool = False,
    ) -> Any:
        """Await an engine call; its failure becomes a 502 naming the dataset and the host.
        With ``missing_ok`` a 404 gives None."""
        try:
            return await call
        except EngineError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise Refuse(502, f"dataset {name}: cannot {what} on host {host.name} "
                              f"(engine {host.address}): {exc.message}") from None


class VolumeDriver:
    """The same datasets as a Docker volume driver (``VolumeDriver.*`` calls), for
    ``powerstrip-adapter volumes --plugin powerstrip-volumes``: ``docker volume create -d
    powerstrip-volumes db`` and ``docker run -v db:/data`` use dataset ``db``, with the hook's
    state, ownership, moves and refusals. Its scope is global: every host's engine sees every
    dataset, and a mount on a host that does not own one moves it there first."""

    def __init__(self, volumes: Volumes) -> None:
        self.volumes = volumes

    async def call(self, method: str, document: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``VolumeDriver.METHOD``; a failure raises (``Refuse`` with the
        adapter's message), which the plugin server answers as ``{"Err": ...}``."""
        handler = getattr(self, f"_{method.lower()}", None)
        if method not in ("Create", "Remove", "Mount", "Unmount", "Path", "Get", "List",
                          "Capabilities") or handler is None:
            raise Refuse(404, f"VolumeDriver.{method} is not a volume driver call")
        try:
            return await handler(document)
        except StoreUnavailable as exc:
            raise Refuse(503, str(exc)) from None

    def _name(self, document: dict[str, Any]) -> str:
        name = document.get("Name")
        if not isinstance(name, str):
            raise Refuse(400, "the call names no volume")
        try:
            return check_name(name)
        except BadBind as exc:
            raise Refuse(400, str(exc)) from None

    async def _mountpoint(self, name: str) -> str:
        """Where this host's copy of the dataset is, or "" when it has none."""
        volumes = self.volumes
        here = volumes._host(volumes.host_name, volumes.docker)
        found = await volumes._call(here, name, "look up the volume", here.control.request(
            "GET", f"/volumes/{volume_name(name)}"), missing_ok=True)
        return (found or {}).get("Mountpoint") or ""

    async def _create(self, document: dict[str, Any]) -> dict[str, Any]:
        name = self._name(document)
        if await _settled(self.volumes.state.dataset(name)) is None:
            await self.volumes.ensure(name)  # a new dataset: made here
        return {}

    async def _remove(self, document: dict[str, Any]) -> dict[str, Any]:
        name = self._name(document)
        volumes = self.volumes
        record = await _settled(volumes.state.dataset(name))
        if record is None:
            return {}
        engine = await _settled(volumes.state.engine_of(record.host))
        if engine is not None:
            owner = volumes._host(record.host, engine)
            # A stopped container's next start would make the dataset again, empty: removing
            # it is refused until that container is removed too.
            await volumes._refuse_if_used(owner, name, "cannot be removed",
                                          stopped_driver_users_block=True)
            await volumes._call(owner, name, "remove the volume", owner.control.request(
                "DELETE", f"/volumes/{volume_name(name)}"), missing_ok=True)
        await _settled(volumes.state.release(name, record.host))
        log.info("dataset %s: removed from host %s", name, record.host)
        return {}

    async def _mount(self, document: dict[str, Any]) -> dict[str, Any]:
        name = self._name(document)
        await self.volumes.ensure(name)
        mountpoint = await self._mountpoint(name)
        if not mountpoint:
            raise Refuse(502, f"dataset {name}: no volume on host {self.volumes.host_name} "
                              "after making it present")
        return {"Mountpoint": mountpoint}

    async def _unmount(self, document: dict[str, Any]) -> dict[str, Any]:
        self._name(document)
        return {}

    async def _path(self, document: dict[str, Any]) -> dict[str, Any]:
        name = self._name(document)
        record = await _settled(self.volumes.state.dataset(name))
        here = record is not None and record.host == self.volumes.host_name
        return {"Mountpoint": await self._mountpoint(name) if here else ""}

    async def _get(self, document: dict[str, Any]) -> dict[str, Any]:
        name = self._name(document)
        record = await _settled(self.volumes.state.dataset(name))
        if record is None:
            raise Refuse(404, f"no such volume: {name}")
        here = record.host == self.volumes.host_name
        return {"Volume": {"Name": name,
                           "Mountpoint": await self._mountpoint(name) if here else "",
                           "Status": {"host": record.host}}}

    async def _list(self, document: dict[str, Any]) -> dict[str, Any]:
        records = await _settled(self.volumes.state.datasets())
        return {"Volumes": [{"Name": record.name} for record in records]}

    async def _capabilities(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"Capabilities": {"Scope": "global"}}


def build(volumes: Volumes) -> Adapter:
    """The adapter serving ``volumes``' pre-hook on container create, and, served with
    ``--plugin``, the same datasets as a Docker volume driver."""
    app = Adapter("volumes")
    app.pre("POST /*/containers/create")(volumes.on_create)
    app.drivers["VolumeDriver"] = VolumeDriver(volumes)
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, register this host in the state file, and serve."""
    parser = Adapter("volumes").argument_parser()
    parser.description = "Powerstrip volumes adapter: datasets that follow their containers"
    parser.add_argument("--host-name", required=True,
                        help="this host's name, as the state file records owners")
    parser.add_argument("--docker", required=True, metavar="ADDRESS",
                        help="this host's Docker Engine, reached directly (not through "
                             "Powerstrip): unix:///path or tcp://HOST:PORT")
    parser.add_argument("--state", required=True, metavar="STORE",
                        help="where all hosts' adapters keep ownership and moves: "
                             "etcd://HOST:PORT[,HOST:PORT...] (hosts that share only a network), "
                             "or sqlite:PATH / a PATH (one file the hosts share)")
    parser.add_argument("--helper-image", default="busybox",
                        help="the image of the containers that carry data during a move "
                             "(present on every host; never run)")
    parser.add_argument("--prefix", default="/flocker",
                        help="bind sources under this directory name datasets")
    args = parser.parse_args(argv)
    if not args.host_name.strip() or args.host_name != args.host_name.strip():
        parser.error("--host-name must be a name without surrounding spaces")
    try:
        parse_address(args.docker)
        normalise_prefix(args.prefix)
    except (AddressError, ValueError) as exc:
        parser.error(str(exc))
    try:
        state = open_state(args.state)
    except ValueError as exc:
        parser.error(str(exc))
    volumes = Volumes(state, args.host_name, args.docker, args.helper_image, args.prefix)
    if isinstance(state, State):
        try:
            replaced = state.register_host(args.host_name, args.docker)
        except sqlite3.Error as exc:
            print(f"adapter volumes: cannot use the state file {args.state}: {exc}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        volumes.registered = True
        if replaced is not None:
            print(f"adapter volumes: host {args.host_name} was registered with engine "
                  f"{replaced}; now {args.docker}", file=sys.stderr)
    else:
        from twisted.internet import reactor

        def register() -> None:
            # At once, so that other hosts can reach this one's data; a store not up yet is
            # tried again on the first request.
            defer.ensureDeferred(volumes.ready()).addErrback(
                lambda failure: log.warning("host %s not registered yet: %s", args.host_name,
                                            failure.getErrorMessage()))

        reactor.callWhenRunning(register)
    build(volumes).serve(args)


if __name__ == "__main__":
    main()
