"""Testing adapters: in-process hook calls, and real engines, proxies and adapters for e2e tests.

Unit tests call an ``Adapter`` in-process with a synthetic hook call and look at the result::

    from powerstrip.testing import call_pre

    def test_refuses_privileged():
        result = call_pre(app, "POST", "/v1.41/containers/create",
                          {"Image": "busybox", "HostConfig": {"Privileged": True}})
        assert result.status == 403 and "privileged" in result.message

A protocol 2 adapter is called as a chosen client, with chosen headers::

    result = call_pre(app, "POST", "/v1.41/containers/create", {"Image": "busybox"},
                      client=unix_client("ci", uid=1001))

End-to-end tests use the fixtures: put ``pytest_plugins = ["powerstrip.testing"]`` in a
``conftest.py`` and ask for ``docker_engine`` (a throwaway Docker Engine, started by the project's
own script, with ``busybox:latest`` imported), ``powerstrip_proxy`` (a factory: give it an adapters
file's text and get a running Powerstrip in front of that engine) and ``adapter_process`` (a
factory: give it a command line and get the adapter's URL once it listens). Everything started is
stopped when the test (or, for the engine, the session) ends. The engine must start: if it cannot,
the fixture fails, it never skips.

The in-process calls and the process helpers need nothing beyond Powerstrip itself, so scripts
and other test runners can use them; the fixtures exist only where pytest is installed
(``pip install powerstrip[testing]``). The throwaway engine comes from the development package
``powerstrip_dev``, imported only when an engine is started.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet import defer
from twisted.python.failure import Failure

from powerstrip.core.identity import Certificate, Client
from powerstrip.hooks.wire import (
    ClientRequest,
    Headers,
    ServerResponse,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
)
from powerstrip.kit.sdk import Adapter, Request, Response
from powerstrip_dev import processes
from powerstrip_dev.processes import (
    Service,
    ServiceError,
    start_proxy,
    start_service,
    wait_for_line,
)

try:
    import pytest
except ImportError:  # the helpers work without it; only the fixtures below need it
    pytest = None

if TYPE_CHECKING:
    from powerstrip_dev.engine import Engine

__all__ = [
    "AdapterProcess",
    "HookResult",
    "ProxyProcess",
    "await_line",
    "call_post",
    "call_post_async",
    "call_pre",
    "call_pre_async",
    "launch_proxy",
    "tcp_client",
    "tls_client",
    "unix_client",
    "short_tmpdir",
    "start_adapter",
    "start_engine",
    "stop_process",
    "stop_proxy",
]

PROXY_START_TIMEOUT = 15.0
PROXY_STOP_TIMEOUT = 10.0
ADAPTER_START_TIMEOUT = 15.0
#: The pytest fixtures, defined (and exported) only when pytest is importable.
FIXTURES = ("adapter_process", "docker_engine", "powerstrip_proxy")


def _fail(message: str) -> NoReturn:
    """Fail the test: as pytest reports a failure when pytest is there, else AssertionError."""
    if pytest is not None:
        pytest.fail(message)
    raise AssertionError(message)


# -- in-process calls ---------------------------------------------------------------------


@dataclass(frozen=True)
class HookResult:
    """What an adapter answered to one hook call: the HTTP status and the answer document, read
    as the proxy reads it (a field the adapter leaves out keeps the value it was sent)."""

    status: int
    document: dict[str, Any]
    raw: bytes = field(repr=False, default=b"")
    sent_request: ClientRequest | None = field(repr=False, default=None)
    sent_response: ServerResponse | None = field(repr=False, default=None)
    #: The protocol version of the call, and whether it showed registry credentials.
    version: int = 1
    credentials: bool = False

    @property
    def refused(self) -> bool:
        """Whether the adapter refused the call (any status but 200)."""
        return self.status != 200

    @property
    def message(self) -> str | None:
        """The refusal's (or error's) message, None for an answer."""
        message = self.document.get("message")
        return message if isinstance(message, str) else None

    @property
    def request(self) -> Request:
        """The pre-hook's answer: the request as the adapter wants it forwarded."""
        if self.refused:
            raise AssertionError(f"the adapter answered {self.status}: {self.message}")
        assert self.sent_request is not None, "not the result of a pre-hook call"
        return Request.from_wire(parse_pre_hook_answer(
            self.raw, self.sent_request, version=self.version, credentials=self.credentials))

    @property
    def response(self) -> Response:
        """The post-hook's answer: the response as the adapter wants it passed on."""
        if self.refused:
            raise AssertionError(f"the adapter answered {self.status}: {self.message}")
        assert self.sent_response is not None, "not the result of a post-hook call"
        return Response.from_wire(parse_post_hook_answer(
            self.raw, self.sent_response, version=self.version, credentials=self.credentials))


def _body_text(body: Any) -> str | None:
    if body is None or isinstance(body, str):
        return body
    return json.dumps(body)


def _result(
    answer: tuple[int, bytes],
    request: ClientRequest,
    response: ServerResponse | None = None,
    version: int = 1,
    credentials: bool = False,
) -> HookResult:
    status, body = answer
    return HookResult(status, json.loads(body), body, request, response, version, credentials)


def unix_client(
    user: str | None = None, *, uid: int = 1000, gid: int | None = None, pid: int = 4242,
    groups: Sequence[str] = (), listener: str = "/run/powerstrip.sock",
) -> Client:
    """A client of a unix listener, as the kernel would name it (``groups``: group names,
    primary first)."""
    return Client("unix", listener, uid, uid if gid is None else gid, pid, user, tuple(groups))


def tcp_client(address: str = "127.0.0.1:53422") -> Client:
    """A client of a plain TCP listener: nothing known but its address."""
    return Client("tcp", address)


def tls_client(
    common_name: str | None = None, *, sans: Sequence[str] = (), subject: str | None = None,
    address: str = "127.0.0.1:53422", sha256: str = "0" * 64,
) -> Client:
    """A client of a TLS listener; with ``common_name`` (or ``subject``) one that presented a
    verified certificate, else one that presented none."""
    if common_name is None and subject is None:
        return Client("tls", address)
    subject = subject if subject is not None else f"CN={common_name}"
    return Client("tls", address, certificate=Certificate(subject, common_name, tuple(sans),
                                                          sha256))


_UNKNOWN_CLIENT = tcp_client()


def _call_form(
    adapter: Adapter, client: Client | None, headers: Any, protocol: int | None,
    body: str | None,
) -> tuple[int, Client, tuple[tuple[str, str], ...]]:
    """The version, client and headers of a synthetic call."""
    if protocol is None:
        protocol = 2 if (client is not None or headers is not None or adapter.protocol == 2) else 1
    if protocol == 1:
        if client is not None or headers is not None:
            raise ValueError("a version 1 call shows neither client nor headers")
        return 1, _UNKNOWN_CLIENT, ()
    if headers is None:
        shown = {"Host": ["docker"], "User-Agent": ["Docker-Client/28.2.2 (linux)"]}
        if body is not None:
            shown["Content-Type"] = ["application/json"]
        headers = shown
    pairs = Headers(headers).pairs() if not isinstance(headers, Headers) else headers.pairs()
    return protocol, client if client is not None else _UNKNOWN_CLIENT, pairs


def call_pre_async(
    adapter: Adapter, method: str, target: str, body: Any = None, *,
    client: Client | None = None, headers: Any = None, protocol: int | None = None,
    credentials: bool = False,
) -> defer.Deferred[HookResult]:
    """Send ``adapter`` a pre-hook call for ``method target``; fires with its ``HookResult``.

    ``body`` is the client's JSON body: a string as sent, or any JSON value (serialised here),
    or None for none. The call is a version 2 one when the adapter is made with
    ``protocol=2``, or ``client`` or ``headers`` is given, or ``protocol=2``: it then comes from
    ``client`` (``unix_client``, ``tcp_client``, ``tls_client``; default an unknown TCP client)
    with ``headers`` (a mapping of names to lists of values, or ``Headers``), registry
    credentials redacted unless ``credentials``, exactly as the proxy would send it.
    """
    text = _body_text(body)
    version, who, pairs = _call_form(adapter, client, headers, protocol, text)
    request = ClientRequest(method, target, text, headers=pairs)
    payload = pre_hook_call(request, version=version, client=who, credentials=credentials)
    return adapter.handle(payload).addCallback(_result, request, None, version, credentials)


def call_post_async(
    adapter: Adapter,
    method: str,
    target: str,
    body: Any = None,
    *,
    code: int = 200,
    response: Any = "",
    content_type: str | None = "application/json",
    client: Client | None = None,
    headers: Any = None,
    response_headers: Any = None,
    protocol: int | None = None,
    credentials: bool = False,
) -> defer.Deferred[HookResult]:
    """Send ``adapter`` a post-hook call: the client's request, and the daemon's ``code``,
    ``content_type`` and ``response`` body (text as sent, or a JSON value); fires with its
    ``HookResult``. ``client``, ``headers``, ``protocol`` and ``credentials`` as for
    ``call_pre_async``; ``response_headers`` are the daemon's (default: its Content-Type)."""
    text = _body_text(body)
    version, who, pairs = _call_form(adapter, client, headers, protocol, text)
    request = ClientRequest(method, target, text, headers=pairs)
    shown: tuple[tuple[str, str], ...] = ()
    if version == 2:
        if response_headers is None:
            response_headers = {} if content_type is None else {"Content-Type": [content_type]}
        shown = Headers(response_headers).pairs()
    elif response_headers is not None:
        raise ValueError("a version 1 call shows no headers")
    sent = ServerResponse(content_type, _body_text(response), code, shown)
    payload = post_hook_call(request, sent, version=version, client=who, credentials=credentials)
    return adapter.handle(payload).addCallback(_result, request, sent, version, credentials)


def _now(deferred: defer.Deferred[HookResult], kind: str) -> HookResult:
    results: list[Any] = []
    deferred.addBoth(results.append)
    if not results:
        raise AssertionError(
            f"the {kind}-hook did not answer at once: it waits on I/O, which needs a running "
            f"reactor. Use call_{kind}_async (e.g. with pytest-twisted) or an e2e test."
        )
    outcome = results[0]
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def call_pre(
    adapter: Adapter, method: str, target: str, body: Any = None, **call: Any,
) -> HookResult:
    """``call_pre_async`` for hooks that answer without waiting on I/O: the result at once
    (keyword arguments as for ``call_pre_async``)."""
    return _now(call_pre_async(adapter, method, target, body, **call), "pre")


def call_post(
    adapter: Adapter,
    method: str,
    target: str,
    body: Any = None,
    **call: Any,
) -> HookResult:
    """``call_post_async`` for hooks that answer without waiting on I/O: the result at once
    (keyword arguments as for ``call_post_async``: ``code``, ``response``, ``content_type``,
    ``client``, ``headers``, ...)."""
    return _now(call_post_async(adapter, method, target, body, **call), "post")


# -- processes ----------------------------------------------------------------------------


def short_tmpdir(prefix: str) -> str:
    """A fresh directory whose path is short enough for unix sockets inside it."""
    # A unix socket path must stay under 108 bytes.
    base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=prefix, dir=base if len(base) <= 40 else "/tmp")


def start_engine() -> Engine:
    """A throwaway Docker Engine of its own, running, with ``busybox:latest`` imported.

    Installs the packages it needs when missing. Stop it with ``engine.stop(remove=True)``.
    """
    # Here, not at the top: the throwaway engine is development tooling that may run apt-get,
    # and importing the test kit for its in-process calls must not load it.
    from powerstrip_dev.engine import Engine, ensure_packages

    ensure_packages()
    engine = Engine(short_tmpdir("ps-"))
    engine.start()
    try:
        engine.ensure_image()
    except BaseException:
        engine.stop(remove=True)
        raise
    return engine


def await_line(
    proc: subprocess.Popen, stdout_path: Path, prefix: str, timeout: float, what: str,
    stderr_path: Path | None = None,
) -> str:
    """The rest of the first line of ``stdout_path`` starting with ``prefix``, waiting up to
    ``timeout`` seconds for ``proc`` to print it; the test fails (and ``proc`` is killed) if it
    exits or runs out of time first."""
    try:
        return wait_for_line(proc, stdout_path, prefix, timeout, what, stderr_path)
    except ServiceError as exc:
        _fail(str(exc))


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM a process (an adapter) and reap it, killing it if it lingers."""
    processes.stop_process(proc)


@dataclass
class ProxyProcess:
    """A Powerstrip running as ``python -m powerstrip serve``; ``host`` is its DOCKER_HOST."""

    host: str
    port: int
    proc: subprocess.Popen
    stderr_path: Path
    workdir: Path | None = None
    config_path: Path | None = None

    def stderr(self) -> str:
        """Everything the proxy has logged so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def launch_proxy(upstream: str, config: Path | None = None) -> ProxyProcess:
    """Start ``python -m powerstrip serve`` in front of ``upstream``, with the adapters file
    ``config`` (None: no hooks), and return once it has printed its ``export DOCKER_HOST=`` line.

    It listens on port 0 and the caller learns the port from that line, so no port is ever raced
    for. Its stderr goes to a file (``ProxyProcess.stderr()``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ps-proxy-"))
    try:
        service = start_proxy(upstream, config=config, logdir=workdir,
                              timeout=PROXY_START_TIMEOUT)
    except ServiceError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        _fail(str(exc))
    match = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", service.value)
    assert match, f"unexpected proxy address {service.value!r}"
    return ProxyProcess(service.value, int(match.group(1)), service.proc, service.stderr_path,
                        workdir, config)


def stop_proxy(running: ProxyProcess) -> None:
    """SIGTERM the proxy; it must exit 0 within 10 s, without a traceback in its log."""
    proc = running.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(PROXY_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        _fail(f"proxy ignored SIGTERM for {PROXY_STOP_TIMEOUT:g} s\n{running.stderr()}")
    log_text = running.stderr()
    if running.workdir is not None:
        shutil.rmtree(running.workdir, ignore_errors=True)
    assert code == 0, f"proxy exited {code} after SIGTERM\n{log_text}"
    assert "Traceback" not in log_text, log_text


@dataclass
class AdapterProcess(Service):
    """An adapter service started by ``start_adapter``; ``url`` is what it printed."""

    workdir: Path = field(repr=False, default=Path())

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the adapter and remove its output files; returns its exit status."""
        code = super().stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code


def start_adapter(argv: Sequence[str], name: str = "adapter") -> AdapterProcess:
    """Run ``argv`` (e.g. ``[sys.executable, "my_adapter.py", "--listen", "127.0.0.1:0"]``)
    and return once it has printed ``listening on URL``, as SDK adapters do."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ps-{name}-"))
    try:
        service = start_service(name, argv, workdir, timeout=ADAPTER_START_TIMEOUT)
    except ServiceError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        _fail(str(exc))
    return AdapterProcess(**vars(service), workdir=workdir)


# -- pytest fixtures (``pytest_plugins = ["powerstrip.testing"]``) --------------------------
# Only where pytest is installed: the helpers above serve scripts and other runners too.

if pytest is not None:
    __all__ += FIXTURES

    @pytest.fixture(scope="session")
    def docker_engine() -> Iterator[Engine]:
        """A throwaway Docker Engine for the session, with ``busybox:latest``; ``.host`` is its
        DOCKER_HOST (talk to it directly to set up and to check what a hook did)."""
        engine = start_engine()
        try:
            yield engine
        finally:
            engine.stop(remove=True)


    @pytest.fixture
    def powerstrip_proxy(
        docker_engine: Engine, tmp_path: Path
    ) -> Iterator[Callable[[str | None], ProxyProcess]]:
        """A factory: ``powerstrip_proxy(adapters_yml_text)`` starts a Powerstrip in front of
        ``docker_engine`` with that adapters file (None: no hooks) and returns it; ``.host`` is the
        DOCKER_HOST to give the docker CLI. Stopped, and checked to exit cleanly, after the test."""
        started: list[ProxyProcess] = []

        def launch(config_text: str | None = None) -> ProxyProcess:
            path = None
            if config_text is not None:
                path = tmp_path / f"adapters-{len(started)}.yml"
                path.write_text(config_text)
            running = launch_proxy(docker_engine.host, path)
            started.append(running)
            return running

        try:
            yield launch
        finally:
            for running in started:
                stop_proxy(running)


    @pytest.fixture
    def adapter_process() -> Iterator[Callable[..., AdapterProcess]]:
        """A factory: ``adapter_process(argv)`` starts an adapter service and returns it once it
        listens (``.url`` for the adapters file, ``.log()`` for its log). Stopped after the test."""
        started: list[AdapterProcess] = []

        def start(argv: Sequence[str], name: str = "adapter") -> AdapterProcess:
            running = start_adapter(argv, name)
            started.append(running)
            return running

        try:
            yield start
        finally:
            for running in started:
                running.stop()
