"""Which hooks a request gets, and which responses post-hooks can see: pure decisions.

A ``Plan`` is fixed when a request's head arrives, from the configuration in force at that
moment, so a request finishes with the configuration it began with even if the file is reloaded
while it is in flight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from powerstrip.core.media import media_type
from powerstrip.hooks.config import AdapterSpec, Config

#: Responses that stream (or hijack the connection): post-hooks never hold them back, so they
#: are not called for them. Matched on the routed path without its API version.
_STREAMS = re.compile(
    r"^/(?:"
    r"events"
    r"|containers/[^/]+/(?:logs|attach(?:/ws)?|wait|export|archive)"
    r"|exec/[^/]+/start"
    r"|images/(?:create|load|get|[^/]+(?:/[^/]+)*/(?:push|get))"
    r"|build|session|grpc"
    r"|plugins/(?:pull|[^/]+(?:/[^/]+)*/(?:upgrade|push))"
    r")$"
)
_STATS = re.compile(r"^/containers/[^/]+/stats$")
_VERSION = re.compile(r"^/v[0-9.]+(?=/)")

#: Sample paths of every streaming endpoint, to warn at load time about post-hooks on them.
STREAM_SAMPLES = (
    ("GET", "/v1.41/events"),
    ("GET", "/v1.41/containers/c/logs"),
    ("GET", "/v1.41/containers/c/stats"),
    ("POST", "/v1.41/containers/c/attach"),
    ("POST", "/v1.41/containers/c/wait"),
    ("GET", "/v1.41/containers/c/export"),
    ("GET", "/v1.41/containers/c/archive"),
    ("POST", "/v1.41/exec/e/start"),
    ("POST", "/v1.41/images/create"),
    ("POST", "/v1.41/images/i/push"),
    ("POST", "/v1.41/images/load"),
    ("GET", "/v1.41/images/get"),
    ("POST", "/v1.41/build"),
    ("POST", "/session"),
)


@dataclass(frozen=True, slots=True)
class Hook:
    """One adapter to call, and the endpoint key that brought it in (for messages and logs)."""

    adapter: AdapterSpec
    endpoint: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The hooks one request gets."""

    pre: tuple[Hook, ...]
    post: tuple[Hook, ...]
    config: Config

    @property
    def endpoints(self) -> str:
        """The matched endpoint keys, for messages."""
        keys = dict.fromkeys(h.endpoint for h in (*self.pre, *self.post))
        return ", ".join(f'"{key}"' for key in keys)


def make_plan(config: Config, endpoints: list) -> Plan | None:
    """The plan for a request that matched ``endpoints`` (in file order); None if no hooks."""
    pre: list[Hook] = []
    post: list[Hook] = []
    for endpoint in endpoints:
        pre.extend(Hook(config.adapters[name], endpoint.key) for name in endpoint.pre)
        post.extend(Hook(config.adapters[name], endpoint.key) for name in endpoint.post)
    if not pre and not post:
        return None
    return Plan(tuple(pre), tuple(post), config)


def is_stream(path: str, query: str = "") -> bool:
    """Whether the response to ``path`` (routed, may carry its version) streams.

    Stats stream unless asked for one sample (``stream=0``/``false``).
    """
    path = _VERSION.sub("", path, count=1)
    if _STREAMS.match(path):
        return True
    if _STATS.match(path):
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        return params.get("stream", "1").lower() not in ("0", "false")
    return False


#: The methods whose form-encoded bodies Go's ``ParseForm`` reads as parameters.
_FORM_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


def hidden_from_hooks(
    method: bytes, headers: list[tuple[bytes, bytes]], has_body: bool
) -> str | None:
    """Why a request must not reach pre-hooks, or None: what the daemon would read from it and
    adapters could not see.

    - A second Content-Type: the daemon reads the first, a naive reader the last, so a body
      could be shown to adapters as one thing and read by the daemon as another.
    - A form-encoded body (POST, PUT, PATCH): Go's ``ParseForm`` reads its values as parameters
      over the query string's (a tag's repo, a build's networkmode), while adapters see no body.
    """
    content_types = [value for name, value in headers if name.lower() == b"content-type"]
    if len(content_types) > 1:
        return "more than one Content-Type header"
    if (has_body and method in _FORM_METHODS and content_types
            and media_type(content_types[0]) == b"application/x-www-form-urlencoded"):
        return ("a form-encoded body (application/x-www-form-urlencoded); send parameters in "
                "the query")
    return None
