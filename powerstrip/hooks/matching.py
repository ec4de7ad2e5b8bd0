"""Which endpoints of the adapters file a request matches, decided on the path dockerd routes.

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

Endpoint patterns are fnmatch globs, case-sensitive, matched against that decoded, clean path
without its query string; the API version is optional, see ``Matcher``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class SpellingError(ValueError):
    """A request target the proxy refuses with ``400 Bad Request``; the message says why."""


class EndpointLike(Protocol):
    """What ``Matcher`` needs of an endpoint: its method (or ``*``) and its path glob."""

    @property
    def method(self) -> str:
        """An HTTP method such as ``POST``, or ``*`` for any."""
        ...

    @property
    def pattern(self) -> str:
        """An fnmatch glob for the path, such as ``/*/containers/create``."""
        ...


E = TypeVar("E", bound=EndpointLike)

# dockerd's Go build runs strconv.Atoi on each version part, which saturates at the int64 maximum.
_ATOI_MAX = 2**63 - 1

# A target that needs none of the slow path's work: a path (no scheme, no authority) of segments
# that start with neither "." nor "/", with no escapes, no control characters, no space and no
# byte beyond ASCII. Such a path is its own decoding and already clean.
_PLAIN = re.compile(
    r"/|(?:/[\x21-\x24\x26-\x2d\x30-\x3e\x40-\x7e][\x21-\x24\x26-\x2e\x30-\x3e\x40-\x7e]*)+/?"
)
_VERSION = re.compile(r"/v([0-9.]+)(?=/)")
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
        version = _VERSION.match(path)
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
    version = _VERSION.match(text)
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
    version = _VERSION.match(path)
    if version is None:
        return None, path
    return version[1], path[version.end():]


# -- patterns -------------------------------------------------------------------------------

_METHOD = re.compile(r"\*|[A-Z]+")


def parse_endpoint_key(text: str) -> tuple[str, str]:
    """Split an endpoint key ``"METHOD PATH-GLOB"`` into its method and path glob.

    The adapters file and the SDK's hook patterns both read keys with this, so a key one
    refuses the other does too. The method is ``*`` or an HTTP method in capitals (dockerd
    routes methods case-sensitively); the glob is ``*`` or starts with ``/``; exactly one
    space separates them and no other whitespace is allowed.

    Raises ValueError whose message says what is wrong and how to write the key.
    """
    form = "write it as \"METHOD PATH-GLOB\", e.g. \"POST /*/containers/create\""
    if text.count(" ") != 1 or any(ch.isspace() and ch != " " for ch in text):
        raise ValueError(f"a method and a path glob separated by exactly one space; {form}")
    method, pattern = text.split(" ")
    if not _METHOD.fullmatch(method):
        if _METHOD.fullmatch(method.upper()):
            raise ValueError(f"methods are written in capitals: {method.upper()!r}")
        raise ValueError(f"method {method!r} must be * or an HTTP method such as POST; {form}")
    if not (pattern == "*" or pattern.startswith("/")):
        raise ValueError(f"path glob {pattern!r} must start with '/' (or be '*'); {form}")
    return method, pattern


# One fnmatch token: a bracketed set as fnmatch.translate reads one ("[", an optional "!", a "]"
# taken literally if first, up to the next "]"; possessive, because without that closing "]" the
# "[" is a literal), or any single character.
_GLOB_TOKEN = re.compile(r"\[!?+\]?+[^\]]*\]|.", re.DOTALL)
# What a versioned path's prefix "/v" + [0-9.]+ needs next, in each state of reading it:
# 0 = nothing read, 1 = "/", 2 = "/v", 3 = "/v" and at least one version character.
_PREFIX_NEEDS = ("/", "v", "0123456789.", "0123456789.")


def unversioned_globs(pattern: str) -> list[str]:
    """Globs that match exactly the unversioned paths P for which ``pattern`` matches ``/vX`` + P.

    X ranges over every API version dockerd routes (``[0-9.]+``), so the answer holds whatever
    version a pattern names or leaves open: ``/*/containers/create`` gives
    ``["*/containers/create", "/containers/create"]`` (a ``*`` may run on through the version
    into the path), ``/v1.41/_ping`` gives ``["/_ping"]``, and ``/containers/create``, which
    cannot match a versioned path, gives ``[]``.
    """
    tokens = _GLOB_TOKEN.findall(pattern)
    found: list[str] = []
    states = {0}
    for index, token in enumerate(tokens):
        if token == "*":
            # The star can read any further part of the prefix, or all of it and some of P.
            found.append("".join(tokens[index:]))
            states = set(range(min(states), 4))
        else:
            states = {
                min(state + 1, 3) for state in states
                if any(_token_matches(token, char) for char in _PREFIX_NEEDS[state])
            }
        if not states:
            break
        if 3 in states:
            found.append("".join(tokens[index + 1:]))
    # P starts with "/", so a glob whose first token cannot match "/" never matches it.
    return [
        glob for glob in dict.fromkeys(found)
        if glob and (glob[0] == "*" or _token_matches(_GLOB_TOKEN.match(glob)[0], "/"))
    ]


def _token_matches(token: str, char: str) -> bool:
    return token == "?" or fnmatch.fnmatchcase(char, token)


def _compile_any(globs: Sequence[str]) -> re.Pattern[str] | None:
    """One regex matching what any of ``globs`` matches (fnmatchcase), or None for no globs."""
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


# An endpoint's glob compiled as written; the globs for an unversioned path (None if it cannot
# match a versioned path); and the endpoint.
_Entry = tuple[re.Pattern[str], re.Pattern[str] | None, E]


class Matcher(Generic[E]):
    """Matches requests against endpoints, keeping the endpoints' order.

    An endpoint matches a request when its method is ``*`` or equals the request's
    (case-sensitively, as dockerd routes) and its glob matches the request's ``canonical_path``
    in fnmatch's case-sensitive sense: ``*`` spans any run of characters, ``/`` included, ``?``
    is one character, ``[...]`` a set. Globs are compared with decoded paths, so they should
    spell characters, not percent-escapes. Requests dockerd redirects match nothing.

    The API version is optional, because dockerd serves every route with and without one:

    - an unversioned request path P also matches a glob that matches ``/vX`` + P for some API
      version X: ``/*/containers/*/start`` and ``/v1.41/containers/*/start`` both cover
      ``/containers/abc/start`` (see ``unversioned_globs``);
    - a versioned request ``/vX/Q`` also matches a glob that cannot match any versioned path
      but matches Q: ``/containers/create`` covers ``/v1.41/containers/create``.

    Versions are only compared when both sides have one: ``/v1.40/containers/create`` does not
    match ``/v1.41/containers/create``.
    """

    def __init__(self, endpoints: Sequence[E]) -> None:
        """Compile every endpoint's glob once; ``endpoints`` keep their order in the results."""
        compiled: list[tuple[str, _Entry[E]]] = []
        for endpoint in endpoints:
            whole = re.compile(fnmatch.translate(endpoint.pattern))
            entry = (whole, _compile_any(unversioned_globs(endpoint.pattern)), endpoint)
            compiled.append((endpoint.method, entry))
        self._any: list[_Entry[E]] = [entry for method, entry in compiled if method == "*"]
        # Per method, the entries that can match it, in file order: one lookup per request.
        self._by_method: dict[str, list[_Entry[E]]] = {
            method: [entry for other, entry in compiled if other in ("*", method)]
            for method, _ in compiled if method != "*"
        }

    def match(self, method: str, target: str) -> list[E]:
        """The endpoints matching ``method`` and the raw request ``target``, in the given order.

        Raises SpellingError for a target the proxy refuses (see ``canonical_path``), but only
        when some endpoint's method could match: with nothing to match, nothing is looked at.
        """
        entries = self._by_method.get(method, self._any)
        if not entries:
            return []
        path = canonical_path(target)
        if path is None:
            return []
        version = _VERSION.match(path)
        if version is None:
            return [
                endpoint for whole, unversioned, endpoint in entries
                if whole.match(path) or (unversioned is not None and unversioned.match(path))
            ]
        bare = path[version.end():]
        return [
            endpoint for whole, unversioned, endpoint in entries
            if whole.match(path) or (unversioned is None and whole.match(bare))
        ]
