"""The path dockerd routes a request target to, however the client spelled it.

A request is matched on the path the daemon will act on, not on how the client spelled it, so no
spelling reaches a hooked endpoint without its hooks. dockerd (Go's ``net/http`` in front of
gorilla/mux) routes a request target like this; ``canonical_path`` models each step, and
``docs/spellings.md`` records the probes of a real daemon that pinned them down:

1. The target is a path (``/v1.41/containers/json?all=1``) or an absolute URL with any scheme
   (``http://host/v1.41/containers/json``, even ``x:/v1.41/...``); the path ends at the first raw
   ``?``. There is no fragment: a ``#`` is an ordinary path character. Anything else, and raw
   control characters, get ``400 Bad Request``.
2. The path is percent-decoded once, every escape alike: ``%63ontainers`` is ``containers`` and
   ``%2F`` is a ``/`` the router sees like any other. An invalid escape gets ``400``.
3. A path that is not clean (``//``, ``/./``, ``/../``, a final ``/.`` or ``/..``; an empty
   path) gets ``301 Moved Permanently`` to its cleaned form, and nothing else happens: a client
   that follows the redirect sends the clean path as a new request. A trailing ``/`` is kept,
   not redirected: ``/containers/create/`` is a path of its own, which no route matches.
4. Routes match case-sensitively, with or without a first segment ``v`` + ``[0-9.]+``: the API
   version. Versions compare numerically, part by part (``1.41``, ``01.41``, ``1.041``,
   ``1.41.0`` and ``1.41.`` are all 1.41), so the canonical path spells the version in its
   shortest form.

It knows nothing of endpoints or hooks: the framing (``core.framing``) reads an escaped attach
with it, the endpoint matcher (``hooks.matching``) matches globs against its answer, and
adapters clean bind sources with ``clean_path``. ``is_stream`` says which routed paths answer
with a stream (post-hooks never hold those back).
"""

from __future__ import annotations

import re


class SpellingError(ValueError):
    """A request target the proxy refuses with ``400 Bad Request``; the message says why."""


# dockerd's Go build runs strconv.Atoi on each version part, which saturates at the int64 maximum.
_ATOI_MAX = 2**63 - 1

# A target that needs none of the slow path's work: a path (no scheme, no authority) of segments
# that start with neither "." nor "/", with no escapes, no control characters, no space and no
# byte beyond ASCII. Such a path is its own decoding and already clean.
_PLAIN = re.compile(
    r"/|(?:/[\x21-\x24\x26-\x2d\x30-\x3e\x40-\x7e][\x21-\x24\x26-\x2e\x30-\x3e\x40-\x7e]*)+/?"
)
#: The API version that begins a routed path: ``/v`` + ``[0-9.]+`` (group 1) before a ``/``.
API_VERSION = re.compile(r"/v([0-9.]+)(?=/)")
# A version already in the form _normal_version gives it (parts short enough not to saturate).
_NORMAL_VERSION = re.compile(r"(?:0|[1-9][0-9]{0,17})\.(?:0|[1-9][0-9]{0,17})")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_RAW_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")
_RAW_FORBIDDEN_TEXT = re.compile(r"[\x00-\x20\x7f]")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})?")


def canonical_path(target: str) -> str | None:
    """The path dockerd routes the request target ``target`` to, or None if it redirects instead.

    ``target`` is the request target as it arrived, one character per byte (latin-1), as the
    proxy holds it; a string with characters beyond U+00FF is taken as UTF-8 text instead.

    The result is the path after the steps in the module docstring: no query string, no scheme
    or authority, percent-decoded once and read as UTF-8, the API version in its shortest form
    (``/v01.41.0/containers/json`` gives ``/v1.41/containers/json``). Decoded characters are
    kept as they are, so a network named ``a%b`` (spelled ``/networks/a%25b``) has the path
    ``/networks/a%b``; feeding such a path back in would decode it again. Paths made only of
    characters that stand for themselves in a target come back unchanged.

    None means dockerd answers ``301 Moved Permanently`` to the cleaned path and does nothing
    else: the proxy forwards such a request as it is, with no hooks, and a client that follows
    the redirect sends the clean path through the proxy as a new request. The asterisk form
    ``*`` is None too: ``OPTIONS *`` gets Go's own empty 200, any other method a 301.

    Raises SpellingError for targets dockerd rejects with 400 (an invalid percent-escape, raw
    control characters or space, a target neither a path nor an absolute URL) and for
    what no Docker client sends and the proxy need not reason about: control characters once
    decoded (``%00``, ``%0A``) and bytes that are not UTF-8.
    """
    path, _, query = target.partition("?")
    if _PLAIN.fullmatch(path) and not (query and _RAW_FORBIDDEN_TEXT.search(query)):
        version = API_VERSION.match(path)
        if version is None or _NORMAL_VERSION.fullmatch(version[1]):
            return path
        return _with_normal_version(path, version)
    return _canonical_slow(target)


def _canonical_slow(target: str) -> str | None:
    try:
        raw = target.encode("latin-1")
    except UnicodeEncodeError:
        raw = target.encode("utf-8")
    if _RAW_FORBIDDEN.search(raw):
        raise SpellingError("control character or space in the request target")
    if raw == b"*":
        return None  # Go answers OPTIONS itself; anything else is redirected to "/%2A"
    rest = raw
    scheme = None if raw.startswith(b"/") else _SCHEME.match(raw)
    if scheme is not None:
        rest = raw[scheme.end():]
    elif not raw.startswith(b"/"):
        raise SpellingError("request target is neither a path nor an absolute URL")
    rest = rest.partition(b"?")[0]
    if scheme is not None:
        if rest.startswith(b"//"):
            # Whatever the authority holds, Go checks it before routing; a bad one only means
            # a 400 from the daemon for a request that was matched like a good one.
            slash = rest.find(b"/", 2)
            rest = rest[slash:] if slash >= 0 else b""
        elif not rest.startswith(b"/"):
            rest = b""  # an opaque URL such as "http:v1.41/x" has an empty path
    path = _ESCAPE.sub(_unescape, rest)
    if _CONTROL.search(path):
        raise SpellingError("control character in the decoded request path")
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        raise SpellingError("request path is not UTF-8 once decoded") from None
    if _clean(text) != text:
        return None
    version = API_VERSION.match(text)
    if version is None or _NORMAL_VERSION.fullmatch(version[1]):
        return text
    return _with_normal_version(text, version)


def _unescape(escape: re.Match[bytes]) -> bytes:
    if escape[1] is None:
        bad = escape.string[escape.start():escape.start() + 3].decode("latin-1")
        raise SpellingError(f"invalid percent-escape {bad!r} in the request path")
    return bytes((int(escape[1], 16),))


def clean_path(path: str) -> str:
    """Go's ``path.Clean`` for a rooted path: ``//etc/``, ``/a/../etc`` and ``/etc/.`` are all
    ``/etc``. dockerd cleans bind sources this way before mounting them."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    return "/" + "/".join(kept)


def _clean(path: str) -> str:
    """Go's ``path.Clean`` for a rooted path, keeping a trailing slash, as gorilla/mux does."""
    if not path:
        return "/"
    if "//" not in path and "/." not in path:
        return path
    cleaned = clean_path(path)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _normal_version(version: str) -> str:
    """``version`` as dockerd compares it, written shortest: ``01.41.0`` -> ``1.41``."""
    parts = [min(int(part), _ATOI_MAX) if part else 0 for part in version.split(".")]
    # Missing parts compare as 0, so trailing zeros past the second part change nothing.
    while len(parts) > 2 and parts[-1] == 0:
        parts.pop()
    if len(parts) == 1:
        parts.append(0)
    return ".".join(map(str, parts))


def _with_normal_version(path: str, version: re.Match[str]) -> str:
    return f"/v{_normal_version(version[1])}{path[version.end():]}"


def split_version(path: str) -> tuple[str | None, str]:
    """Split a routed path into its API version (None if it has none) and the rest.

    ``"/v1.41/containers/json"`` gives ``("1.41", "/containers/json")`` and
    ``"/containers/json"`` gives ``(None, "/containers/json")``. As in dockerd's routes, the
    version is a whole first segment of ``v`` and one or more digits and dots, followed by
    more path; it is returned as spelled, and ``canonical_path`` has already normalised it.
    """
    version = API_VERSION.match(path)
    if version is None:
        return None, path
    return version[1], path[version.end():]


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
