"""Write a Powerstrip adapter in a few lines: hooks are functions, registered by endpoint pattern.

::

    from powerstrip.kit.sdk import Adapter, Refuse

    app = Adapter("policy")

    @app.pre("POST /*/containers/create")
    def no_privileged(req):
        if req.json and req.json.get("HostConfig", {}).get("Privileged"):
            raise Refuse(403, "privileged containers are not allowed")
        return req

    @app.post("GET /*/containers/*/json")
    def label(req, resp):
        data = resp.json
        data["Config"]["Labels"]["seen"] = "yes"
        return resp.with_json(data)

    if __name__ == "__main__":
        app.run()  # --listen HOST:PORT or --unix PATH

Patterns are endpoint keys as in the adapters file (``METHOD PATH-GLOB``), read by the same
``parse_endpoint_key`` and matched exactly as the proxy matches them
(``powerstrip.hooks.matching.Matcher``), so an adapter may listen at one URL for
many endpoints and route the calls itself. A pre-hook gets a ``Request`` and returns it, a
changed copy, or None (unchanged); a post-hook gets the ``Request`` and a ``Response`` and returns
the response likewise. A hook may also return a Deferred, or be ``async def``. Several hooks
matching one call run in registration order, each getting what the previous one returned.
Raising ``Refuse`` answers a status of the hook's choosing, which the proxy passes to the client.
The wire format is in ``docs/protocol.md``.

An adapter made with ``Adapter(name, protocol=2)`` (and mapped with ``protocol: 2`` in the
adapters file) also sees who asked, ``request.client`` (a ``Client``: unix uid and user, TLS
certificate, or the peer's address), and the headers, ``request.headers`` and
``response.headers``, which its hooks may change like any other field.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.web import resource, server

from powerstrip.core.identity import Certificate, Client
from powerstrip.core.paths import SpellingError
from powerstrip.hooks.matching import Matcher, parse_endpoint_key
from powerstrip.hooks.wire import (
    PROTOCOL_VERSIONS,
    CallError,
    Headers,
    post_hook_answer,
    pre_hook_answer,
    read_hook_call,
)
from powerstrip.kit.records import HookFailed, Refuse, Request, Response
from powerstrip.proxy.addresses import LISTEN_BACKLOG

#: Where dockerd looks for plugin sockets (``NAME.sock``) first.
PLUGIN_DIR = "/run/docker/plugins"

__all__ = ["Adapter", "Certificate", "Client", "Headers", "HookFailed", "Refuse", "Request",
           "Response"]

# Named for the public module adapters import this from: it heads each call's log line, and it
# is the name an adapter author knows to set a level on.
log = logging.getLogger("powerstrip.adapter")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Hook:
    """A registered hook; ``method`` and ``pattern`` are what ``Matcher`` reads."""

    kind: str
    method: str
    pattern: str
    func: Callable[..., Any]

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))


def _decode_call(
    payload: bytes, call: str | None = None
) -> tuple[str, int, Request, Response | None]:
    """The hook type, protocol version, request and (for post-hooks) response of a hook-call
    document."""
    hook_call = read_hook_call(payload)
    request = dataclasses.replace(Request.from_wire(hook_call.request, hook_call.client),
                                  call=call)
    response = hook_call.response
    return (hook_call.kind, hook_call.version, request,
            None if response is None else Response.from_wire(response))


def _document(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


async def _call(func: Callable[..., Any], *args: Any) -> Any:
    """Call a hook and wait for its result, whether a value, a Deferred or a coroutine."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Adapter:
    """A Powerstrip adapter: a named set of pre-hooks and post-hooks, and a server for them."""

    def __init__(self, name: str, protocol: int = 1) -> None:
        """``name`` appears in error messages and log lines. ``protocol`` is the version of the
        wire format the adapter's hooks are written for: with 2 they read ``request.client``
        and the headers, and the adapters file must map the adapter with ``protocol: 2``."""
        if protocol not in PROTOCOL_VERSIONS:
            raise ValueError(f"protocol must be one of {PROTOCOL_VERSIONS}, not {protocol!r}")
        self.name = name
        self.protocol = protocol
        self._warned_version = False
        self._hooks: dict[str, list[_Hook]] = {"pre-hook": [], "post-hook": []}
        self._matchers: dict[str, Matcher[_Hook]] = {}
        #: Docker plugin drivers served with ``--plugin`` besides the hooks: the kind named in
        #: ``Implements`` (``VolumeDriver``, ``IpamDriver``) to the object answering its calls.
        self.drivers: dict[str, Any] = {}

    # -- registration -----------------------------------------------------------------------

    def pre(self, pattern: str) -> Callable[[F], F]:
        """Register the decorated function as a pre-hook for the endpoint key ``pattern``.

        It is called as ``func(request)`` and returns a ``Request``, or None for unchanged.
        Raises ValueError for a key the adapters file would refuse.
        """
        return self._register("pre-hook", pattern)

    def post(self, pattern: str) -> Callable[[F], F]:
        """Register the decorated function as a post-hook for the endpoint key ``pattern``.

        It is called as ``func(request, response)`` and returns a ``Response``, or None for
        unchanged. Raises ValueError for a key the adapters file would refuse.
        """
        return self._register("post-hook", pattern)

    def _register(self, kind: str, pattern: str) -> Callable[[F], F]:
        try:
            method, glob = parse_endpoint_key(pattern)
        except ValueError as exc:
            raise ValueError(f"hook pattern {pattern!r}: {exc}") from None

        def decorate(func: F) -> F:
            self._hooks[kind].append(_Hook(kind, method, glob, func))
            # Rebuilt on the next call, so hooks may be added at any time.
            self._matchers.pop(kind, None)
            return func

        return decorate

    def matching(self, kind: str, request: Request) -> list[_Hook]:
        """The hooks of ``kind`` ("pre-hook" or "post-hook") matching ``request``, in order."""
        matcher = self._matchers.get(kind)
        if matcher is None:
            matcher = self._matchers[kind] = Matcher(self._hooks[kind])
        try:
            return matcher.match(request.method, request.target)
        except SpellingError:
            # The proxy refuses such targets before calling anyone; nothing here can match.
            return []

    # -- handling ---------------------------------------------------------------------------

    def handle(
        self, payload: bytes, call: str | None = None
    ) -> defer.Deferred[tuple[int, bytes]]:
        """Process one hook-call document; fires with the HTTP status and body to answer.

        ``call`` is the proxy's ``Powerstrip-Call`` header, shown to hooks as ``Request.call``.

        Never fails: a malformed call gives 400, a ``Refuse`` its status, a hook that raises
        500, each with a JSON ``{"message": ...}`` body.
        """
        return defer.ensureDeferred(self._handle(payload, call))

    async def _handle(self, payload: bytes, call: str | None) -> tuple[int, bytes]:
        started = time.monotonic()
        kind, what, names = "?", "-", "-"
        try:
            kind, version, request, response = _decode_call(payload, call)
        except CallError as exc:
            status, document, outcome = (
                400, {"message": f"adapter {self.name}: not a hook call: {exc}"}, "bad call"
            )
        else:
            what = f"{request.method} {request.target}"
            if version < self.protocol and not self._warned_version:
                # Its hooks would see no client and no headers, and decide as if nobody asked.
                self._warned_version = True
                log.warning("adapter %s is written for protocol %d but was called with version "
                            "%d: map it with 'protocol: %d' in the adapters file, or its hooks "
                            "see no client and no headers", self.name, self.protocol, version,
                            self.protocol)
            hooks = self.matching(kind, request)
            names = ",".join(hook.name for hook in hooks) or "-"
            try:
                document = await self._run(kind, hooks, request, response,
                                            min(version, self.protocol))
                status, outcome = 200, "answered" if hooks else "no hook"
            except Refuse as refusal:
                status, document, outcome = refusal.status, {"message": refusal.message}, "refused"
            except HookFailed as failure:
                status, document, outcome = 500, {"message": str(failure)}, "error"
        ms = (time.monotonic() - started) * 1000
        log.info("%s %s [%s] %d %s %.1f ms", kind, what, names, status, outcome, ms)
        return status, _document(document)

    async def _run(
        self, kind: str, hooks: Sequence[_Hook], request: Request, response: Response | None,
        version: int = 1,
    ) -> dict[str, Any]:
        """Run ``hooks`` in order and give the answer document, in protocol ``version``."""
        result = await self.apply(kind, hooks, request, response)
        if isinstance(result, Request):
            return pre_hook_answer(result.to_wire(), version)
        return post_hook_answer(result.to_wire(), version)

    async def apply(
        self, kind: str, hooks: Sequence[_Hook], request: Request, response: Response | None,
    ) -> Request | Response:
        """Run ``hooks`` (of ``matching``) in order: the request the pre-hooks leave, or the
        response the post-hooks leave. ``Refuse`` passes through; a hook that fails raises
        ``HookFailed`` naming it. The plugin forms of an adapter (``powerstrip.kit.plugin``)
        run its hooks through this too."""
        if kind == "pre-hook":
            for hook in hooks:
                result = await self._invoke(hook, request)
                request = self._check(hook, result, Request, request)
            return request
        assert response is not None
        for hook in hooks:
            result = await self._invoke(hook, request, response)
            response = self._check(hook, result, Response, response)
        return response

    @property
    def implements(self) -> list[str]:
        """The Docker plugin kinds this adapter serves with ``--plugin``: ``authz`` when it has
        hooks (pre-hooks decide ``AuthZReq``, post-hooks ``AuthZRes``), and each driver it was
        given."""
        kinds = ["authz"] if self._hooks["pre-hook"] or self._hooks["post-hook"] else []
        return kinds + list(self.drivers)

    async def _invoke(self, hook: _Hook, *args: Any) -> Any:
        try:
            return await _call(hook.func, *args)
        except Refuse:
            raise
        except Exception as exc:
            log.exception("adapter %s: %s %s failed", self.name, hook.kind, hook.name)
            raise HookFailed(
                f"adapter {self.name}: {hook.kind} {hook.name} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _check(self, hook: _Hook, result: Any, kind: type, previous: Any) -> Any:
        if result is None:
            return previous
        if not isinstance(result, kind):
            message = (
                f"adapter {self.name}: {hook.kind} {hook.name} returned a "
                f"{type(result).__name__}, not a {kind.__name__} or None"
            )
            log.error("%s", message)
            raise HookFailed(message)
        return result

    # -- serving ----------------------------------------------------------------------------

    def resource(self) -> resource.Resource:
        """A twisted.web resource answering hook calls POSTed to any path."""
        return _AdapterResource(self)

    def argument_parser(self) -> argparse.ArgumentParser:
        """The command line ``run`` reads: ``--listen HOST:PORT`` or ``--unix PATH``.

        An adapter with options of its own adds them here, parses, sets itself up from the
        result, and calls ``serve``.
        """
        parser = argparse.ArgumentParser(description=f"Powerstrip adapter {self.name}")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--listen", metavar="HOST:PORT", help="a TCP address (port 0: any)")
        where.add_argument("--unix", metavar="PATH", help="a unix socket path")
        parser.add_argument("--plugin", metavar="NAME",
                            help="also serve as the Docker plugin NAME, on DIR/NAME.sock "
                            "(Plugin.Activate, AuthZ from the hooks, and the adapter's drivers)")
        parser.add_argument("--plugin-dir", metavar="DIR", default=PLUGIN_DIR,
                            help=f"where dockerd finds plugin sockets (default {PLUGIN_DIR})")
        return parser

    def run(self, argv: Sequence[str] | None = None) -> None:
        """Serve on ``--listen HOST:PORT`` or ``--unix PATH`` until interrupted.

        Prints ``listening on URL`` once listening (with the real port when port 0 was asked)
        and logs one line per call to stderr.
        """
        self.serve(self.argument_parser().parse_args(argv))

    def serve(self, args: argparse.Namespace) -> None:
        """Serve at ``args.listen`` or ``args.unix`` (as parsed by ``argument_parser``) until
        interrupted; see ``run``."""
        from twisted.internet import endpoints, reactor

        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")

        quote = endpoints.quoteStringArgument
        if args.unix:
            # A socket file left by an earlier run would make the bind fail.
            if os.path.exists(args.unix):
                os.unlink(args.unix)
            # Owner and group only: whoever can post to an adapter can tell it any client it
            # likes (Twisted would make the socket 0666, open to every local user).
            description = f"unix:{quote(args.unix)}:backlog={LISTEN_BACKLOG}:mode=660"
        else:
            host, _, port = args.listen.rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            if not port.isdigit():
                print(f"adapter {self.name}: --listen wants HOST:PORT, not {args.listen!r}",
                      file=sys.stderr)
                raise SystemExit(2)
            # The proxy opens a connection per hook call in flight: a burst of hooked requests
            # past Twisted's default backlog of 50 would wait for SYN retransmits, seconds.
            description = f"tcp:{port}:interface={quote(host)}:backlog={LISTEN_BACKLOG}"
        site = server.Site(self.resource())
        site.noisy = False
        failed: list[str] = []

        def listening(port: Any) -> None:
            if args.unix:
                url = f"unix://{args.unix}:/"
            else:
                address = port.getHost()
                shown = f"[{address.host}]" if ":" in address.host else address.host
                url = f"http://{shown}:{address.port}/"
            print(f"listening on {url}", flush=True)

        def not_listening(failure: Any) -> None:
            failed.append(str(failure.value))
            reactor.stop()

        def listen_hooks(_: object = None) -> None:
            endpoint = endpoints.serverFromString(reactor, description)
            endpoint.listen(site).addCallbacks(listening, not_listening)

        def start() -> None:
            if not getattr(args, "plugin", None):
                listen_hooks()
                return
            from powerstrip.kit.plugin import listen_plugin

            def plugin_listening(path: str) -> None:
                # Before "listening on": whoever waits for that line finds the plugin ready.
                print(f"plugin {args.plugin} on {path}", flush=True)
                listen_hooks()

            listen_plugin(reactor, self, args.plugin, args.plugin_dir).addCallbacks(
                plugin_listening, not_listening)

        reactor.callWhenRunning(start)
        reactor.run()
        if failed:
            print(f"adapter {self.name}: cannot listen: {failed[0]}", file=sys.stderr)
            raise SystemExit(1)


class _AdapterResource(resource.Resource):
    """Answers POSTs at any path with ``Adapter.handle``."""

    isLeaf = True

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self._adapter = adapter

    def render(self, request: server.Request) -> Any:
        """Hook calls are POSTs; anything else gets a JSON 405, as a Docker-style client
        expects of an error."""
        if request.method != b"POST":
            body = _document({"message": f"adapter {self._adapter.name}: hook calls are POSTs, "
                                         f"not {request.method.decode('latin-1')}"})
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"POST")
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", str(len(body)).encode())
            return b"" if request.method == b"HEAD" else body
        return super().render(request)

    def render_POST(self, request: server.Request) -> Any:  # noqa: N802 - twisted.web's name
        """Hand the call to the adapter and answer when its hooks are done."""
        payload = request.content.read() if request.content is not None else b""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(result: tuple[int, bytes]) -> None:
            if gone:
                return
            status, body = result
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/json")
            # A length instead of chunked encoding, and the body in one write.
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body)
            request.finish()

        call = request.getHeader(b"powerstrip-call")
        done = self._adapter.handle(payload, call.decode("ascii", "replace") if call else None)
        done.addCallback(answer)

        return server.NOT_DONE_YET


def load(target: str) -> Adapter:
    """The Adapter named by ``target``: ``path/to/file.py`` or ``package.module``, with
    ``:name`` for an attribute other than ``app``."""
    import importlib
    import importlib.util

    where, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if where.endswith(".py") or os.sep in where:
        path = os.path.abspath(where)
        # Its own directory first, so that it can import its neighbours as when run directly.
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(path))[0], path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"powerstrip-adapter: cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(where)
    # Compared with the class as imported by name: run as ``python -m powerstrip.adapter``,
    # this file is also ``__main__``, whose Adapter is a different class.
    from powerstrip.kit.sdk import Adapter as adapter_class

    app = getattr(module, attribute, None)
    if not isinstance(app, adapter_class):
        raise SystemExit(f"powerstrip-adapter: {where} has no Adapter called {attribute!r}")
    return app


#: The example adapters' package: the repository's ``adapters/``, installed under this name.
EXAMPLES_PACKAGE = "powerstrip_adapters"


def example_command(name: str) -> Callable[[list[str]], None] | None:
    """The command line (its ``main``) of the example adapter ``name`` (``policy``, ``volumes``,
    ``network``, ``debug``), which takes that example's own options; None when ``name`` is not
    one, or the examples are not installed."""
    import importlib

    try:
        examples = importlib.import_module(EXAMPLES_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != EXAMPLES_PACKAGE:
            raise
        return None
    if name not in getattr(examples, "EXAMPLES", ()):
        return None
    return importlib.import_module(f"{EXAMPLES_PACKAGE}.{name}").main


def main(argv: Sequence[str] | None = None) -> None:
    """``powerstrip-adapter TARGET --listen HOST:PORT | --unix PATH``: serve an adapter module
    (see ``load``) without a ``__main__`` block of its own, or an example adapter by its bare
    name (``powerstrip-adapter policy --listen ...``) with that example's options."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: powerstrip-adapter FILE.py|MODULE[:NAME]|EXAMPLE "
              "(--listen HOST:PORT | --unix PATH) [OPTIONS]\n"
              "examples: debug, volumes, network, policy", file=sys.stderr)
        raise SystemExit(2)
    command = None
    try:
        app = load(args[0])
    except ModuleNotFoundError as exc:
        # Only when no module of that name is importable: the user's own ``policy.py`` in the
        # current directory still wins over the example.
        command = example_command(args[0]) if exc.name == args[0] else None
        if command is None:
            raise
    if command is not None:
        command(args[1:])
        return
    app.run(args[1:])


if __name__ == "__main__":
    main()
