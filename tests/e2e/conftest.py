"""Fixtures for the end-to-end suite: a throwaway Docker Engine, the real proxy in front of it, and
helpers to run docker clients against either.

Everything here runs real processes. The engine is started once per session and must start: if
it cannot, the suite fails rather than skips, so a broken CI machine is never mistaken for a
passing one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from powerstrip.testing import (  # noqa: F401 - fixtures and helpers the e2e tests import
    AdapterProcess,
    ProxyProcess,
    adapter_process,
    await_line,
    launch_proxy,
    powerstrip_proxy,
    short_tmpdir,
    start_adapter,
    start_engine,
    stop_process,
    stop_proxy,
)
from powerstrip_dev.engine import Engine
from powerstrip_dev.processes import ServiceError, start_proxy

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# A current CLI (28 here): the one whose API negotiation, 101 upgrades and wait-before-start the
# proxy must get right. Machines without it fall back to whatever docker is on PATH; the
# session header names the CLI and version that ran.
DOCKER_CLI = (
    "/usr/local/bin/docker" if os.access("/usr/local/bin/docker", os.X_OK)
    else shutil.which("docker") or "/usr/bin/docker"
)
# Debian's 20.10 CLI: the one whose DOCKER_BUILDKIT=1 build talks to the daemon's own BuildKit
# over /session and /grpc (newer CLIs hand builds to buildx instead).
LEGACY_CLI = "/usr/bin/docker"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with ``e2e``, so ``-m "not e2e"`` skips the slow suite."""
    # This hook sees the whole session's items, not just this directory's.
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


# -- engine and proxy ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A dockerd of its own for the whole session, with ``busybox:latest`` imported."""
    eng = start_engine()
    try:
        yield eng
    finally:
        eng.stop(remove=True)


@pytest.fixture(scope="session")
def docker_engine(engine: Engine) -> Engine:
    """The session's engine, for the fixtures of ``powerstrip.testing``."""
    return engine


#: Set to 1 to run every test that uses the ``proxy`` fixture (the CLI matrix, docker-py, ...)
#: through a proxy whose adapters file sends every request and response, "* *", through a null
#: adapter: pre- and post-hooks that change nothing must change nothing, byte for byte.
HOOKED = os.environ.get("POWERSTRIP_E2E_HOOKED", "") not in ("", "0")
NULL_ADAPTER = REPO / "adapters" / "null_adapter.py"


def start_null_adapter() -> AdapterProcess:
    """Start the null adapter on 127.0.0.1, any free port; return once it listens."""
    return start_adapter([sys.executable, str(NULL_ADAPTER), "--listen", "127.0.0.1:0"],
                         "null-adapter")


def null_adapter_calls(adapter: AdapterProcess) -> int:
    """How many hook calls the null adapter has answered (it logs one line per call)."""
    return adapter.log().count('"POST ')


def catch_all_config(url: str) -> str:
    """An adapters file that runs ``url`` as a pre- and post-hook on every request."""
    return (
        "version: 1\n"
        "endpoints:\n"
        '  "* *":\n'
        "    pre: [null_adapter]\n"
        "    post: [null_adapter]\n"
        "adapters:\n"
        f"  null_adapter: {url}\n"
    )


@pytest.fixture(scope="session")
def proxy(engine: Engine) -> Iterator[ProxyProcess]:
    """The real proxy forwarding to ``engine``: with no adapters configured, or, when
    ``POWERSTRIP_E2E_HOOKED=1``, with the null adapter as a catch-all pre- and post-hook.

    At teardown it must exit 0 within 10 s of SIGTERM.
    """
    if not HOOKED:
        running = launch_proxy(engine.host)
        try:
            yield running
        finally:
            stop_proxy(running)
        return

    workdir = Path(tempfile.mkdtemp(prefix="ps-hooked-"))
    adapter = start_null_adapter()
    try:
        config = workdir / "adapters.yml"
        config.write_text(catch_all_config(adapter.url))
        running = launch_proxy(engine.host, config)
        try:
            # Prove the hooks are in force before the suite relies on them: one request, one
            # pre-hook call and one post-hook call.
            ok(docker(running.host, "version", "--format", "{{.Server.APIVersion}}"))
            assert wait_for(lambda: null_adapter_calls(adapter) >= 2, 5), (
                f"the null adapter saw no hook calls\n{running.stderr()}")
            yield running
        finally:
            stop_proxy(running)
        print(f"\nnull adapter answered {null_adapter_calls(adapter)} hook calls", file=sys.stderr)
    finally:
        adapter.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def targets(engine: Engine, proxy: ProxyProcess) -> dict[str, str]:
    """The same daemon reached two ways, in the order scenarios run: direct first, then proxied."""
    return {"direct": engine.host, "proxy": proxy.host}


def rss_peak_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@contextlib.contextmanager
def serving(upstream: str, listen: str = "tcp://127.0.0.1:0"
            ) -> Iterator[tuple[subprocess.Popen, str]]:
    """A ``powerstrip serve`` process of its own, with no hooks: the process and what its
    printed line assigns (``DOCKER_HOST=...`` and, for TLS, ``DOCKER_TLS_VERIFY=1``). It must
    exit 0 on SIGTERM at the end."""
    logdir = Path(tempfile.mkdtemp(prefix="ps-serving-"))
    try:
        try:
            proxy = start_proxy(upstream, listen=listen, logdir=logdir)
        except ServiceError as exc:
            pytest.fail(str(exc))
        try:
            yield proxy.proc, proxy.assignments
        finally:
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.proc.wait(10) == 0
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


@pytest.fixture
def fresh_proxy(engine: Engine) -> Iterator[tuple[subprocess.Popen, str]]:
    """A proxy of its own, with no hooks, so its peak memory and descriptors belong to one
    test: its process and its ``DOCKER_HOST``."""
    with serving(engine.host) as (proc, assignments):
        yield proc, assignments.split("=", 1)[1]


# -- docker clients -----------------------------------------------------------------------

_DOCKER_CONFIG = tempfile.mkdtemp(prefix="ps-cfg-")
atexit.register(shutil.rmtree, _DOCKER_CONFIG, ignore_errors=True)
# Variables that would point the CLI elsewhere or change its behaviour behind a test's back.
_SCRUBBED = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
             "DOCKER_CONFIG", "DOCKER_BUILDKIT", "DOCKER_API_VERSION", "BUILDKIT_PROGRESS")


def docker_env(host: str, env_extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a docker client talking to ``host`` with an empty config directory."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(DOCKER_HOST=host, DOCKER_CONFIG=_DOCKER_CONFIG, DOCKER_CLI_HINTS="false")
    env.update(env_extra or {})
    return env


def docker(
    host: str,
    *args: str,
    input: bytes | None = None,
    timeout: float = 60,
    cli: str = DOCKER_CLI,
    env_extra: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the docker CLI against ``host`` and capture stdout and stderr separately, as bytes."""
    return subprocess.run(
        [cli, *args], input=input, capture_output=True, timeout=timeout,
        env=docker_env(host, env_extra), cwd=cwd,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    """``result``'s stdout, after asserting the command succeeded (its stderr in the message)."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"stderr: {result.stderr.decode(errors='replace')}"
    )
    return result.stdout


def unique(prefix: str) -> str:
    """A name no other test or earlier run uses."""
    return f"ps-{prefix}-{uuid.uuid4().hex[:10]}"


# Things that legitimately differ between two runs of the same command a moment apart.
_NORMALISERS = [
    (re.compile(r"sha256:[0-9a-f]{64}"), "<ID>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<ID>"),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<ID>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?"
                r"(?: ?(?:Z|[+-]\d\d:?\d\d))?(?: [A-Z]{3,5})?"), "<TIME>"),
    (re.compile(r"(?:About an?|Less than an?|\d+) (?:second|minute|hour|day|week|month|year)s?"),
     "<DURATION>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:[kKMGT]i?)?B\b"), "<SIZE>"),
    # Column widths follow the longest cell, which the substitutions above change.
    (re.compile(r"[ \t]+"), " "),
]


def normalise(output: bytes | str) -> str:
    """``output`` with IDs, times, durations and sizes replaced by placeholders."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    for pattern, replacement in _NORMALISERS:
        text = pattern.sub(replacement, text)
    return text


@dataclass
class Scratch:
    """Names handed out to a test, and removal of whatever was created under them."""

    host: str
    names: list[str] = field(default_factory=list)

    def name(self, prefix: str) -> str:
        """A fresh unique name, remembered for cleanup."""
        name = unique(prefix)
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        """Remove containers, images, volumes and networks named by this test; ignore misses."""
        if not self.names:
            return
        for args in (("rm", "-f", "-v"), ("rmi", "-f"), ("volume", "rm", "-f"), ("network", "rm")):
            docker(self.host, *args, *self.names, timeout=60)


@pytest.fixture
def scratch(engine: Engine) -> Iterator[Scratch]:
    """Unique names for the test's containers and images, removed (directly) afterwards."""
    made = Scratch(engine.host)
    try:
        yield made
    finally:
        made.cleanup()


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- terminals and streams ----------------------------------------------------------------


class PtyProcess:
    """A process whose stdin, stdout and stderr are a real pseudo-terminal."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env),
            start_new_session=True,
        )
        os.close(slave)
        self.output = bytearray()
        self.closed = False

    def _read(self, timeout: float) -> bool:
        if self.closed:
            return False
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO once the last slave descriptor is closed
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.output += chunk
        return True

    def read_until(self, needle: bytes, timeout: float) -> bool:
        """Read until ``needle`` has appeared in the output; False on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                return needle in self.output
        return True

    def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        os.write(self.master, data)

    def finish(self, timeout: float) -> int:
        """Read to the end of output, then return the exit status; kill it on timeout."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()) and time.monotonic() < deadline:
            pass
        try:
            return self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            os.close(self.master)


class LineReader:
    """Incremental, deadline-bound reading of a running process's stdout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buffer = b""
        self.fd = proc.stdout.fileno()

    def readline(self, timeout: float) -> bytes | None:
        """The next complete line, or None if none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def wait_for_line(self, needle: bytes, timeout: float) -> bytes | None:
        """The first line containing ``needle`` within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(deadline - time.monotonic())
            if line is None or needle in line:
                return line


def popen_docker(host: str, *args: str, env_extra: Mapping[str, str] | None = None,
                 cli: str = DOCKER_CLI, stdin: bool = False) -> subprocess.Popen:
    """Start a long-running docker command whose stdout the test reads as it comes.

    With ``stdin`` the test gets a pipe to write to, else the command reads /dev/null.
    """
    return subprocess.Popen(
        [cli, *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=docker_env(host, env_extra),
    )


def end(proc: subprocess.Popen) -> None:
    """Stop a long-running command started by a test and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
