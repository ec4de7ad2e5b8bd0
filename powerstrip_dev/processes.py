"""Starting and stopping the services of a rig: adapters and proxies as child processes.

Each service writes its output to files (never to a pipe nobody drains) and announces itself with
a line on standard output: adapters print ``listening on URL``, the proxy prints
``export DOCKER_HOST=...``. ``start_service`` waits for that line; ``start_proxy`` is the one way
the tests, the test kit, the demo and the benchmark start a ``powerstrip serve``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProxyService",
    "Service",
    "ServiceError",
    "start_proxy",
    "start_service",
    "stop_process",
    "wait_for_line",
]

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
#: What ``powerstrip serve`` prints once every listener is up, before the DOCKER_HOST value.
PROXY_LINE = "export DOCKER_HOST="
PROXY_START_TIMEOUT = 15.0


class ServiceError(RuntimeError):
    """A service exited, or did not announce itself in time; the message includes its output."""


def wait_for_line(
    proc: subprocess.Popen, stdout_path: Path, prefix: str, timeout: float, what: str,
    stderr_path: Path | None = None,
) -> str:
    """The rest of the first line of ``stdout_path`` that starts with ``prefix``, once ``proc``
    has printed it. Raises ``ServiceError`` (after killing ``proc``) if it exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        for line in stdout_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            errors = stderr_path.read_text(errors="replace") if stderr_path else ""
            raise ServiceError(
                f"{what} did not print {prefix!r} within {timeout:g} s "
                f"(exit status {proc.returncode})\nstdout: {stdout_path.read_text()}\n"
                f"stderr: {errors}"
            )
        time.sleep(0.05)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that imports ``powerstrip``, wherever it was started from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@dataclass
class Service:
    """A running service: its announced value (an adapter's URL, the proxy's DOCKER_HOST)."""

    name: str
    value: str
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        """An adapter's URL, as it announced it."""
        return self.value

    def output(self) -> str:
        """What it has printed on standard output so far."""
        return self.stdout_path.read_text(errors="replace")

    def log(self) -> str:
        """What it has logged on standard error so far."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM it and wait; returns its exit status (killing it if it lingers)."""
        return stop_process(self.proc, timeout)


def start_service(
    name: str,
    argv: Sequence[str],
    logdir: Path,
    prefix: str = "listening on ",
    timeout: float = 15.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> Service:
    """Start ``argv`` with output in ``logdir/NAME.out`` and ``.err`` and wait for its
    announcement line starting with ``prefix``. ``wrap`` goes in front of ``argv``: a command
    that runs it elsewhere, such as ``nsenter --net=...`` (``powerstrip_dev.fabric``)."""
    logdir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = logdir / f"{name}.out", logdir / f"{name}.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen([*wrap, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=child_env(env), cwd=cwd)
    value = wait_for_line(proc, stdout_path, prefix, timeout, name, stderr_path)
    return Service(name, value, proc, stdout_path, stderr_path)


@dataclass
class ProxyService(Service):
    """A running ``powerstrip serve``. ``value`` is the rest of its ``export DOCKER_HOST=`` line:
    the first listener's address, followed by `` DOCKER_TLS_VERIFY=1`` for a TLS listener."""

    @property
    def docker_host(self) -> str:
        """The DOCKER_HOST of its first listener, as it printed it (port 0 resolved)."""
        return self.value.split(" ", 1)[0]

    @property
    def assignments(self) -> str:
        """The shell assignments it printed after ``export``: ``DOCKER_HOST=...`` and, for a
        TLS listener, ``DOCKER_TLS_VERIFY=1``."""
        return f"DOCKER_HOST={self.value}"

    @property
    def port(self) -> int | None:
        """The TCP port of its first listener; None for a unix socket."""
        host = self.docker_host
        return int(host.rsplit(":", 1)[1]) if host.startswith("tcp://") else None


def start_proxy(
    upstream: str,
    *extra: str,
    logdir: Path,
    listen: str = "tcp://127.0.0.1:0",
    config: Path | str | None = None,
    name: str = "powerstrip",
    timeout: float = PROXY_START_TIMEOUT,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> ProxyService:
    """Start ``python -m powerstrip serve --listen LISTEN --upstream UPSTREAM [--config CONFIG]
    EXTRA...`` and return once it has printed its ``export DOCKER_HOST=`` line; its output goes
    to ``logdir/NAME.out`` and ``.err``. ``ServiceError`` (the proxy killed) if it exits first
    or ``timeout`` seconds pass.

    The default listener is port 0, whose bound port the caller learns from that line, so no
    port is ever raced for. Only ``config`` names an adapters file: ``POWERSTRIP_CONFIG`` is
    emptied (``env`` may set it again) and the proxy runs in ``cwd``, by default ``logdir``,
    where no ``./powerstrip.yml`` is found. ``wrap`` is as for ``start_service``.
    """
    argv = python("-m", "powerstrip", "serve", "--listen", listen, "--upstream", upstream)
    if config is not None:
        argv += ["--config", str(config)]
    argv += extra
    logdir.mkdir(parents=True, exist_ok=True)
    service = start_service(name, argv, logdir, prefix=PROXY_LINE, timeout=timeout,
                            cwd=cwd or logdir, env={"POWERSTRIP_CONFIG": "", **(env or {})},
                            wrap=wrap)
    return ProxyService(**vars(service))


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGTERM ``proc`` and reap it, killing it if it lingers; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def python(*args: str) -> list[str]:
    """A command line running this Python with ``args``."""
    return [sys.executable, *args]
