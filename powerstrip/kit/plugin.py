"""An SDK adapter served as a Docker plugin: the same hooks, called by dockerd.

``powerstrip-adapter ... --plugin NAME`` (``Adapter.serve``) also listens on
``/run/docker/plugins/NAME.sock``, where dockerd finds plugins by name, and answers Docker's plugin
protocol there (``powerstrip.plugins.wire``):

- ``/Plugin.Activate``: the kinds the adapter implements (``Adapter.implements``);
- ``/AuthZPlugin.AuthZReq``: the adapter's pre-hooks decide, from the request as a pre-hook
  would see it, with dockerd's authenticated user as its ``client``. A ``Refuse`` denies with the
  hook's message. AuthZ cannot rewrite a request, so a hook that would change it denies too,
  saying so: allowing the request unchanged would let through what the hook meant to alter.
- ``/AuthZPlugin.AuthZRes``: the post-hooks, likewise, on the daemon's response;
- the calls of each driver the adapter was given (``Adapter.drivers``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from twisted.internet import defer, endpoints
from twisted.web import resource, server

from powerstrip.kit.records import HookFailed, Refuse, Request, Response
from powerstrip.plugins import wire
from powerstrip.proxy.addresses import LISTEN_BACKLOG

log = logging.getLogger("powerstrip.adapter")


def _changes(before: Request | Response, after: Request | Response) -> list[str]:
    """The fields a hook chain changed, by their wire names."""
    if isinstance(before, Request) and isinstance(after, Request):
        pairs = (("Method", before.method, after.method), ("Request", before.target, after.target),
                 ("Body", before.body, after.body), ("Headers", before.headers, after.headers))
    else:
        assert isinstance(before, Response) and isinstance(after, Response)
        pairs = (("Code", before.code, after.code),
                 ("ContentType", before.content_type, after.content_type),
                 ("Body", before.body, after.body), ("Headers", before.headers, after.headers))
    return [name for name, old, new in pairs if old != new]


class PluginServer:
    """Answers Docker plugin calls for one adapter; pure of I/O but for the hooks it awaits."""

    def __init__(self, adapter: Any, name: str) -> None:
        """``adapter`` is a ``powerstrip.kit.sdk.Adapter`` (not imported: it imports this)."""
        self.adapter = adapter
        self.name = name

    async def call(self, path: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer to the plugin call POSTed to ``path``."""
        try:
            if path == wire.ACTIVATE:
                return 200, wire.activate_answer(self.adapter.implements)
            if path in (wire.AUTHZ_REQUEST, wire.AUTHZ_RESPONSE) and \
                    wire.AUTHZ in self.adapter.implements:
                return 200, await self._authz(path, payload)
            kind, _, method = path.lstrip("/").partition(".")
            driver = self.adapter.drivers.get(kind)
            if driver is not None:
                return 200, await driver.call(method, wire.read_object(payload, path))
        except wire.PluginCallError as exc:
            return 400, wire.error_answer(f"plugin {self.name}: {path}: {exc}")
        except Refuse as refusal:
            # A driver's refusal, in the adapter's words, as dockerd prints an Err.
            log.info("plugin %s: %s refused: %s", self.name, path, refusal.message)
            return 500, wire.error_answer(refusal.message)
        except Exception as exc:  # noqa: BLE001 - dockerd gets every failure as an Err
            log.exception("plugin %s: %s failed", self.name, path)
            return 500, wire.error_answer(f"plugin {self.name}: {path}: {exc}")
        return 404, wire.error_answer(f"plugin {self.name} does not implement {path}")

    async def _authz(self, path: str, payload: bytes) -> dict[str, Any]:
        call = wire.read_authz_call(payload)
        what = f"{call.method} {call.uri}"
        hidden = wire.hidden_body(call)
        if hidden is not None:
            return self._deny(what, hidden)
        try:
            shown = wire.authz_request(call)
        except wire.AmbiguousBody as exc:
            return self._deny(what, f"the body can be read two ways: {exc}")
        client = wire.client_of(call)
        request = Request.from_wire(shown, client)
        kind = "pre-hook" if path == wire.AUTHZ_REQUEST else "post-hook"
        response = None if kind == "pre-hook" else Response.from_wire(wire.authz_response(call))
        hooks = self.adapter.matching(kind, request)
        if not hooks:
            return wire.authz_answer(True)
        before: Request | Response = request if response is None else response
        try:
            after = await self.adapter.apply(kind, hooks, request, response)
        except Refuse as refusal:
            log.info("plugin %s: %s %s refused: %s", self.name, kind, what, refusal.message)
            return wire.authz_answer(False, refusal.message)
        except HookFailed as failure:
            return self._deny(what, str(failure))
        changed = _changes(before, after)
        if changed:
            return self._deny(what, f"a {kind} of adapter {self.adapter.name} would change "
                                    f"{', '.join(changed)}, which an authorization plugin "
                                    "cannot do; refused rather than passed on unchanged")
        log.info("plugin %s: %s %s allowed", self.name, kind, what)
        return wire.authz_answer(True)

    def _deny(self, what: str, why: str) -> dict[str, Any]:
        log.info("plugin %s: %s denied: %s", self.name, what, why)
        return wire.authz_answer(False, f"plugin {self.name}: {why}")


class PluginResource(resource.Resource):
    """The plugin socket's HTTP side."""

    isLeaf = True

    def __init__(self, plugin: PluginServer) -> None:
        super().__init__()
        self.plugin = plugin

    def render_POST(self, request: server.Request) -> Any:  # noqa: N802 - twisted.web's name
        """Answer a plugin call when its hooks are done."""
        payload = request.content.read() if request.content is not None else b""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(result: tuple[int, dict[str, Any]]) -> None:
            if gone:
                return
            status, document = result
            body = json.dumps(document).encode()
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", wire.CONTENT_TYPE.encode())
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body)
            request.finish()

        path = request.path.decode("latin-1")
        defer.ensureDeferred(self.plugin.call(path, payload)).addCallback(answer)
        return server.NOT_DONE_YET


def listen_plugin(reactor: Any, adapter: Any, name: str,
                  directory: str) -> defer.Deferred[str]:
    """Listen on ``DIRECTORY/NAME.sock`` as the Docker plugin ``name``; fires with the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.sock")
    if os.path.exists(path):
        os.unlink(path)  # a socket left by an earlier run would make the bind fail
    site = server.Site(PluginResource(PluginServer(adapter, name)))
    site.noisy = False
    # dockerd runs as root; nobody else need reach a plugin that answers for the daemon.
    description = (f"unix:{endpoints.quoteStringArgument(path)}:backlog={LISTEN_BACKLOG}"
                   ":mode=600")
    listening = endpoints.serverFromString(reactor, description).listen(site)
    return listening.addCallback(lambda _: path)
