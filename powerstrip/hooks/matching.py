"""Which endpoints of the adapters file a request matches, decided on the path dockerd routes.

The path is the one ``powerstrip.core.paths.canonical_path`` gives, whatever the client's
spelling. Endpoint patterns are fnmatch globs, case-sensitive, matched against that decoded,
clean path without its query string; the API version is optional, see ``Matcher``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from powerstrip.core.paths import API_VERSION, canonical_path


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
        version = API_VERSION.match(path)
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
