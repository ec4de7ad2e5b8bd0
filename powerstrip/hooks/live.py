"""The configuration in force: what requests are matched against, and its hot reload.

The file is polled about once a second and reloaded on SIGHUP. A new file that fails validation
changes nothing but the log. Each request takes a ``Plan`` from the configuration in force when
its head arrives, so requests in flight finish with the configuration they began with.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from twisted.internet.task import LoopingCall

from powerstrip.core.paths import STREAM_SAMPLES
from powerstrip.hooks.client import AdapterClient
from powerstrip.hooks.config import EMPTY, ClientPolicy, Config, ConfigError, load_config
from powerstrip.hooks.matching import Matcher
from powerstrip.hooks.plans import Plan, make_plan
from powerstrip.observe.observer import Observer

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def stream_warnings(config: Config) -> list[str]:
    """One line per endpoint whose post-hooks will not see some responses' bodies."""
    lines = []
    for endpoint in config.endpoints:
        if not endpoint.post:
            continue
        matcher = Matcher([endpoint])
        streams = [f"{method} {path}" for method, path in STREAM_SAMPLES
                   if matcher.match(method, path)]
        if streams:
            lines.append(
                f'post-hooks {list(endpoint.post)} on "{endpoint.key}" (line {endpoint.line}) '
                f"are not called for streaming or hijacked responses, which pass through "
                f"unbuffered; this endpoint covers some: {', '.join(streams)}"
            )
    return lines


class LiveConfig:
    """The configuration in force, its matcher, and the client that calls its adapters."""

    def __init__(self, reactor: object, path: Path | None, config: Config = EMPTY) -> None:
        self.reactor = reactor
        self.path = path
        self.adapters = AdapterClient(reactor, config.max_body)
        #: Told of reloads and of the file in force (None: nobody counts).
        self.observer: Observer | None = None
        self._stamp = _stamp(path) if path is not None else None
        self._watch: LoopingCall | None = None
        self._apply(config)

    @classmethod
    def from_file(cls, reactor: object, path: Path | None) -> LiveConfig:
        """Load ``path`` (None: no hooks); raises ConfigError if it is invalid."""
        config = load_config(path) if path is not None else EMPTY
        return cls(reactor, path, config)

    def _apply(self, config: Config) -> None:
        self.config = config
        #: Who may use the proxy (None: everyone); connections look at it on each request, so
        #: a reload that narrows it refuses the next request of a connection already open.
        self.clients: ClientPolicy | None = config.clients
        self.matcher = Matcher(config.endpoints)
        self.active = bool(config.endpoints)
        methods = {endpoint.method for endpoint in config.endpoints}
        #: The methods some endpoint names (None: one names "*"), so that the most frequent
        #: requests, GETs on a configuration that hooks none, are told apart in one lookup.
        self._methods: frozenset[bytes] | None = (
            None if "*" in methods else frozenset(m.encode("latin-1") for m in methods))
        self.adapters.max_body = config.max_body
        for line in stream_warnings(config):
            log.warning("%s", line)

    def observe(self, observer: Observer) -> None:
        """Report reloads to ``observer``, and the file in force (its path and SHA-256)."""
        self.observer = observer
        self.adapters.observer = observer
        digest = ""
        if self.path is not None:
            try:
                digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            except OSError:
                pass
        observer.stats.config = (os.fspath(self.path) if self.path is not None else "", digest)

    def plan(self, method: bytes, target: bytes) -> Plan | None:
        """The hooks for a request, from the configuration in force now."""
        if self._methods is not None and method not in self._methods:
            return None
        config = self.config
        matches = self.matcher.match(method.decode("latin-1"), target.decode("latin-1"))
        return make_plan(config, matches) if matches else None

    def reload(self, why: str) -> bool:
        """Load the file again; keep the running configuration if the new one is invalid."""
        if self.path is None:
            return False
        self._stamp = _stamp(self.path)
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("configuration %s not reloaded (%s), keeping the running one:\n%s",
                      self.path, why, exc)
            if self.observer is not None:
                self.observer.stats.config_reloads["invalid"] += 1
            return False
        self._apply(config)
        if self.observer is not None:
            self.observer.stats.config_reloads["ok"] += 1
            self.observe(self.observer)
        log.info("configuration %s reloaded (%s): %d endpoints, %d adapters",
                 self.path, why, len(config.endpoints), len(config.adapters))
        return True

    def _poll(self) -> None:
        if self.path is not None and _stamp(self.path) != self._stamp:
            self.reload("file changed")

    def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Reload when the file changes (polled) and on SIGHUP."""
        if self.path is None:
            return
        self._watch = LoopingCall(self._poll)
        self._watch.clock = self.reactor
        self._watch.start(interval, now=False)
        if hasattr(self.reactor, "callFromThread"):
            import signal

            # The handler runs between bytecodes; hand the work to the reactor's own thread.
            signal.signal(
                signal.SIGHUP,
                lambda *_: self.reactor.callFromThread(self.reload, "SIGHUP"),
            )

    def stop(self) -> None:
        """Stop watching and close pooled adapter connections."""
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self.adapters.close()


def describe(path: Path | None) -> str:
    """How the log names a configuration source."""
    return os.fspath(path) if path is not None else "none (no hooks)"
