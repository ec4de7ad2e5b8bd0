"""Endpoint matching: fnmatch globs on the path dockerd routes, whatever its spelling.

The spellings below and their effects were observed on dockerd 20.10 (see docs/spellings.md);
tests/e2e/test_spellings.py checks them against a running daemon.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from powerstrip.core.paths import SpellingError, _canonical_slow, canonical_path, split_version
from powerstrip.hooks.config import parse_config
from powerstrip.hooks.matching import Matcher, unversioned_globs


@dataclass(frozen=True)
class Ep:
    method: str
    pattern: str


def keys(found: list[Ep]) -> list[str]:
    return [f"{e.method} {e.pattern}" for e in found]


def matches(method: str, pattern: str, target: str, request_method: str = "POST") -> bool:
    return bool(Matcher([Ep(method, pattern)]).match(request_method, target))


# -- canonical_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path"),
    [
        # plain, with and without version and query
        ("/v1.41/containers/create", "/v1.41/containers/create"),
        ("/v1.41/containers/create?name=x&y=%2F", "/v1.41/containers/create"),
        ("/containers/create", "/containers/create"),
        ("/_ping", "/_ping"),
        ("/", "/"),
        ("/v1.41/containers/create?", "/v1.41/containers/create"),
        ("/v1.41/containers/create??name=x", "/v1.41/containers/create"),
        # percent-encoding: decoded once, every character alike, "/" included
        ("/v1.41%2Fcontainers%2Fcreate", "/v1.41/containers/create"),
        ("/v1.41%2fcontainers%2fcreate", "/v1.41/containers/create"),
        ("/v1.41/%63ontainers/create", "/v1.41/containers/create"),
        ("/v1.41/containers/creat%65", "/v1.41/containers/create"),
        ("/%761.41/containers/create", "/v1.41/containers/create"),
        ("/v1%2e41/containers/create", "/v1.41/containers/create"),
        ("/v1.41/containers/abc%2Fdef/start", "/v1.41/containers/abc/def/start"),
        ("/v1.41%252Fcontainers%252Fcreate", "/v1.41%2Fcontainers%2Fcreate"),
        ("/v1.41/containers/create%3Fname=x", "/v1.41/containers/create?name=x"),
        ("/v1.41/containers/create%2F", "/v1.41/containers/create/"),
        ("/v1.41/containers/create%2e", "/v1.41/containers/create."),
        ("/v1.41/containers/create%20", "/v1.41/containers/create "),
        ("/networks/a%25b", "/networks/a%b"),
        ("/networks/caf%C3%A9", "/networks/caf\u00e9"),
        ("/networks/a%3Fb", "/networks/a?b"),
        # characters that are just characters to Go
        ("/v1.41/containers/create#frag", "/v1.41/containers/create#frag"),
        ("/v1.41/containers/create;x=1", "/v1.41/containers/create;x=1"),
        ("/v1.41\\containers\\create", "/v1.41\\containers\\create"),
        ("/v1.41/containers/create+", "/v1.41/containers/create+"),
        ("/v1.41/containers/create/", "/v1.41/containers/create/"),
        # case is kept: dockerd routes case-sensitively
        ("/V1.41/containers/create", "/V1.41/containers/create"),
        ("/v1.41/Containers/create", "/v1.41/Containers/create"),
        # versions as dockerd compares them
        ("/v1.41.0/containers/create", "/v1.41/containers/create"),
        ("/v01.41/containers/create", "/v1.41/containers/create"),
        ("/v1.041/containers/create", "/v1.41/containers/create"),
        ("/v1.41./containers/create", "/v1.41/containers/create"),
        ("/v1.40.99/containers/create", "/v1.40.99/containers/create"),
        ("/v1/containers/create", "/v1.0/containers/create"),
        ("/v.41/containers/create", "/v0.41/containers/create"),
        ("/v1..41/containers/create", "/v1.0.41/containers/create"),
        ("/v1.99999999999999999999/x", "/v1.9223372036854775807/x"),
        ("/v/containers/create", "/v/containers/create"),
        ("/v1.4a/containers/create", "/v1.4a/containers/create"),
        ("/v1.41", "/v1.41"),
        # absolute-form targets: any scheme, the authority dropped
        ("http://docker/v1.41/containers/create", "/v1.41/containers/create"),
        ("HTTP://docker/v1.41/containers/create", "/v1.41/containers/create"),
        ("foo://docker/v1.41/containers/create?name=x", "/v1.41/containers/create"),
        ("http://user@docker/v1.41/containers/create", "/v1.41/containers/create"),
        ("http://[::1]:99/v1.41/containers/create", "/v1.41/containers/create"),
        ("http:/v1.41/containers/create", "/v1.41/containers/create"),
        ("http:///v1.41/containers/create", "/v1.41/containers/create"),
        ("v1.41:/containers/create", "/containers/create"),
        ("http://docker/v1.41%2Fcontainers/create", "/v1.41/containers/create"),
        ("http://docker:xx/v1.41/containers/create", "/v1.41/containers/create"),
        ("http://%zz/v1.41/containers/create", "/v1.41/containers/create"),
        # what dockerd answers with a 301 redirect to the cleaned path: None
        ("//v1.41/containers/create", None),
        ("/v1.41//containers/create", None),
        ("/v1.41/./containers/create", None),
        ("/v1.41/x/../containers/create", None),
        ("/v1.41/containers/create/.", None),
        ("/v1.41/containers/create/..", None),
        ("/v1.41/containers%2F%2Fcreate", None),
        ("/%2Fv1.41/containers/create", None),
        ("/v1.41/%2e/containers/create", None),
        ("/v1.41/x/%2e%2e/containers/create", None),
        ("/v1.41/containers/create%2F.", None),
        ("/..", None),
        ("/./", None),
        ("http://docker", None),
        ("http://docker?x", None),
        ("http:v1.41/containers/create", None),
        ("http://docker//v1.41/containers/create", None),
        ("http://docker/v1.41/./containers/create", None),
        ("*", None),
        # dot segments that are names, not "." or "..": clean
        ("/v1.41/containers/.../json", "/v1.41/containers/.../json"),
        ("/v1.41/containers/.x/json", "/v1.41/containers/.x/json"),
        ("/v1.41/containers/x./json", "/v1.41/containers/x./json"),
    ],
)
def test_canonical_path(target, path):
    assert canonical_path(target) == path


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/v1.41/containers/create%zz", "invalid percent-escape '%zz'"),
        ("/v1.41/containers/create%", "invalid percent-escape '%'"),
        ("/v1.41/containers/create%2", "invalid percent-escape '%2'"),
        ("/v1.41/containers/create%2g?x", "invalid percent-escape '%2g'"),
        ("/v1.41/containers/create%00", "control character in the decoded"),
        ("/v1.41/containers/create%0A", "control character in the decoded"),
        ("/v1.41/containers/create%7f", "control character in the decoded"),
        ("/v1.41/containers/create\t", "control character or space"),
        ("/v1.41/containers/cre ate", "control character or space"),
        ("/v1.41/containers/create\x7f", "control character or space"),
        ("/v1.41/containers/create?x=\x01", "control character or space"),
        ("/v1.41/containers/create%E9", "not UTF-8"),
        ("/v1.41/containers/create\xe9", "not UTF-8"),
        ("%2Fv1.41/containers/create", "neither a path nor an absolute URL"),
        ("v1.41/containers/create", "neither a path nor an absolute URL"),
        (":/v1.41/containers/create", "neither a path nor an absolute URL"),
        ("", "neither a path nor an absolute URL"),
        ("*?x=1", "neither a path nor an absolute URL"),
        ("*/v1.41/containers/create", "neither a path nor an absolute URL"),
    ],
)
def test_refused_spellings(target, why):
    with pytest.raises(SpellingError, match=why.replace("?", r"\?")):
        canonical_path(target)


def test_text_beyond_latin1_is_taken_as_utf8():
    assert canonical_path("/networks/\u20ac") == "/networks/\u20ac"
    assert canonical_path("/networks/%E2%82%AC") == "/networks/\u20ac"


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("/v1.41/containers/json", ("1.41", "/containers/json")),
        ("/containers/json", (None, "/containers/json")),
        ("/v1.41/", ("1.41", "/")),
        ("/v1.41", (None, "/v1.41")),
        ("/v1/x", ("1", "/x")),
        ("/v.../x", ("...", "/x")),
        ("/v/x", (None, "/v/x")),
        ("/V1.41/x", (None, "/V1.41/x")),
        ("/v1.41a/x", (None, "/v1.41a/x")),
        ("/version", (None, "/version")),
        ("/v1.41/v1.40/x", ("1.41", "/v1.40/x")),
        ("/", (None, "/")),
    ],
)
def test_split_version(path, split):
    assert split_version(path) == split


# -- globs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        ("/*/containers/create", "/v1.41/containers/create", True),
        ("/*/containers/create", "/v1.41/containers/create?name=x", True),
        ("/*/containers/create", "/v1.41/containers/created", False),
        ("/*/containers/create", "/v1.41/containers/create/", False),
        # "*" spans "/"
        ("/*/containers/*/start", "/v1.41/containers/abc/start", True),
        ("/*/containers/*/start", "/v1.41/containers/a/b/start", True),
        ("/*/start", "/v1.41/containers/abc/start", True),
        ("/*", "/v1.41/containers/abc/start", True),
        ("/*", "/", True),
        ("*", "/v1.41/anything/at/all", True),
        # "?" is exactly one character, never a query string
        ("/v1.4?/containers/json", "/v1.41/containers/json", True),
        ("/v1.4?/containers/json", "/v1.4/containers/json", False),
        ("/*/containers/json?all=1", "/v1.41/containers/json?all=1", False),
        ("/*/containers/json?", "/v1.41/containers/jsonx", True),
        # sets
        ("/*/containers/[a-c]*/start", "/v1.41/containers/abc/start", True),
        ("/*/containers/[a-c]*/start", "/v1.41/containers/xyz/start", False),
        ("/*/containers/[!a-c]*/start", "/v1.41/containers/xyz/start", True),
        ("/*/containers/[]]", "/v1.41/containers/]", True),
        # case-sensitive everywhere
        ("/*/containers/create", "/v1.41/Containers/create", False),
        ("/*/CONTAINERS/create", "/v1.41/containers/create", False),
        # regex characters are literal in a glob
        ("/*/containers/a.b", "/v1.41/containers/axb", False),
        ("/*/containers/a+b", "/v1.41/containers/a+b", True),
        ("/*/containers/(x)", "/v1.41/containers/(x)", True),
        # matched on the decoded path
        ("/*/containers/create", "/v1.41/%63ontainers%2Fcreate", True),
        ("/*/networks/caf\u00e9", "/v1.41/networks/caf%C3%A9", True),
        ("/*/networks/caf?", "/v1.41/networks/caf%C3%A9", True),
        ("/*/networks/a%b", "/v1.41/networks/a%25b", True),
        ("/*/networks/a%25b", "/v1.41/networks/a%25b", False),
        ("/*/containers/*/start", "/v1.41/containers/abc%2Fdef/start", True),
        # the version as dockerd reads it
        ("/v1.41/containers/create", "/v01.41.0/containers/create", True),
        ("/v1.41/containers/create", "/v1.40/containers/create", False),
        ("/v1.40/containers/create", "/v1.41/containers/create", False),
    ],
)
def test_glob(pattern, target, expected):
    assert matches("*", pattern, target) is expected


def test_method():
    assert matches("POST", "/*", "/x", "POST")
    assert not matches("POST", "/*", "/x", "GET")
    assert matches("*", "/*", "/x", "GET")
    assert matches("*", "/*", "/x", "PROPFIND")
    # dockerd routes methods case-sensitively, so "post" reaches no POST handler
    assert not matches("POST", "/*", "/x", "post")
    assert not matches("GET", "/*", "/x", "HEAD")


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        # an unversioned request matches a glob written for versioned paths ...
        ("/*/containers/create", "/containers/create", True),
        ("/*/containers/*/start", "/containers/abc/start", True),
        ("/*/containers/*/start", "/containers/a/b/start", True),
        ("/v1.41/containers/create", "/containers/create", True),
        ("/v1.40/containers/create", "/containers/create", True),
        ("/v*/containers/create", "/containers/create", True),
        ("/v1.4[01]/containers/create", "/containers/create", True),
        ("/v?.??/containers/create", "/containers/create", True),
        ("/*/_ping", "/_ping", True),
        # ... and keeps glob semantics: a "*" may run on through the version into the path
        ("/v*/start", "/containers/abc/start", True),
        ("/v1.*/start", "/containers/abc/start", True),
        ("/*/containers/create", "/x/containers/create", True),
        # but only where the glob's start can be a version
        ("/v[a-z]/containers/create", "/containers/create", False),
        ("/x*/containers/create", "/containers/create", False),
        ("/?/containers/create", "/containers/create", False),
        ("/*/containers/create", "/containers/created", False),
        # a versioned request matches a glob without a version ...
        ("/containers/create", "/v1.41/containers/create", True),
        ("/containers/*/start", "/v1.41/containers/abc/start", True),
        ("/_ping", "/v1.41/_ping", True),
        ("/containers/create", "/containers/create", True),
        # ... but versions are compared when both have one
        ("/v1.41/containers/create", "/v1.40/containers/create", False),
        ("/v1.41/containers/create", "/v1.40/v1.41/containers/create", False),
        ("/containers/create", "/v1.41/x/containers/create", False),
        # "everything" globs still mean everything
        ("/*", "/containers/create", True),
        ("/*", "/v1.41/containers/create", True),
        ("*", "/containers/create", True),
    ],
)
def test_version_is_optional(pattern, target, expected):
    assert matches("*", pattern, target) is expected


def test_file_order_is_kept():
    endpoints = [
        Ep("*", "/*/containers/*"),
        Ep("POST", "/*/containers/create"),
        Ep("GET", "/*/containers/json"),
        Ep("*", "/*"),
        Ep("POST", "/*/containers/create"),
    ]
    matcher = Matcher(endpoints)
    found = matcher.match("POST", "/v1.41/containers/create")
    assert found == [endpoints[0], endpoints[1], endpoints[3], endpoints[4]]
    assert found[1] is endpoints[1] and found[3] is endpoints[4]
    assert matcher.match("GET", "/containers/json") == [endpoints[0], endpoints[2], endpoints[3]]
    assert matcher.match("DELETE", "/_ping") == [endpoints[3]]


def test_config_endpoints():
    config = parse_config(
        'endpoints:\n'
        '  "POST /*/containers/create": {pre: [a]}\n'
        '  "* /*/containers/*/start": {post: [a]}\n'
        'adapters: {a: http://a/x}\n'
    )
    matcher = Matcher(config.endpoints)
    assert [e.key for e in matcher.match("POST", "/containers/create?name=x")] == [
        "POST /*/containers/create"
    ]
    assert [e.key for e in matcher.match("POST", "/v1.41/containers/c%2Fd/start")] == [
        "* /*/containers/*/start"
    ]


def test_redirected_requests_match_nothing():
    matcher = Matcher([Ep("*", "*"), Ep("POST", "/*/containers/create")])
    for target in ("//v1.41/containers/create", "/v1.41/x/../containers/create", "/v1.41/./_ping"):
        assert matcher.match("POST", target) == []
    assert keys(matcher.match("POST", "/v1.41/containers/create")) == [
        "* *", "POST /*/containers/create",
    ]


def test_refusal_only_where_something_could_match():
    assert Matcher([]).match("GET", "/x%zz") == []
    get_only = Matcher([Ep("GET", "/*")])
    assert get_only.match("POST", "/x%zz") == []
    with pytest.raises(SpellingError):
        get_only.match("GET", "/x%zz")


@pytest.mark.parametrize(
    ("pattern", "globs"),
    [
        ("/*/containers/create", ["*/containers/create", "/containers/create"]),
        ("/v1.41/_ping", ["/_ping"]),
        ("/v*/x", ["*/x", "/x"]),
        ("/v1.4[01]/x", ["/x"]),
        ("/v?/x", ["/x"]),
        ("/??/x", ["/x"]),
        ("/[v]1/x", ["/x"]),
        ("/*s/json", ["*s/json"]),
        ("/*", ["*"]),
        ("*", ["*"]),
        ("/containers/create", []),
        ("/?/x", []),
        ("/v[a-z]/x", []),
        ("/[/]/x", []),
        ("/v", []),
        ("/v1", []),
    ],
)
def test_unversioned_globs(pattern, globs):
    assert unversioned_globs(pattern) == globs


# -- properties -------------------------------------------------------------------------------

# Characters that stand for themselves in a request target, and so in a canonical path.
SAFE = string.ascii_letters + string.digits + "-_.~!$&'()*+,;=:@"
segment = st.text(SAFE, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
safe_path = st.lists(segment, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))
version = st.sampled_from(["", "/v1.41", "/v1.40", "/v1.12"])


def percent(char: str, upper: bool) -> str:
    return "".join(f"%{byte:02X}" if upper else f"%{byte:02x}" for byte in char.encode())


@st.composite
def spelled(draw, path_strategy=safe_path):
    """A path, and the same path with some of its characters (never the first) percent-encoded."""
    path = draw(version) + draw(path_strategy)
    flags = draw(st.lists(st.sampled_from([None, True, False]), min_size=len(path),
                          max_size=len(path)))
    pairs = zip(path[1:], flags[1:], strict=True)
    spelling = path[0] + "".join(c if flag is None else percent(c, flag) for c, flag in pairs)
    return path, spelling


@given(spelled(), st.sampled_from(["", "?", "?all=1", "?name=a%2Fb&x=/../"]))
@example(("/v1.41/containers/create", "/v1.41%2Fcontainers%2Fcreate"), "?name=x")
@example(("/v1.41/containers/create", "/%76%31%2E41%2Fcontainers/create"), "")
def test_encoding_any_characters_keeps_the_path(spelling, query):
    path, spelled_path = spelling
    canonical = canonical_path(path)
    assert canonical_path(spelled_path + query) == canonical
    # Only a version-like first segment ("/v0/...") is rewritten.
    assert canonical == path or split_version(path)[0] is not None


# Version segments that match "v1.41". Not "v?.??": its "?" can match the "/" after a shorter
# version, so it covers "/a/b" by way of "/v1./a/b", which "/v1.41/a/b" does not give it.
@given(st.sampled_from(["*", "v*", "v1.*", "v1.41", "v[0-9]*", "v1.4[01]", "v1.4?", "*1",
                        "containers", "c*", "*s", "[a-z]*"]),
       st.lists(st.sampled_from(["containers", "*", "?", "c*", "*s", "[a-c]*", "start", "json",
                                 "abc", "a?c", "[!x]"]), max_size=4),
       st.lists(st.sampled_from(["containers", "abc", "start", "json", "a.c", "s", "c", "x",
                                 "images", "v"]), min_size=1, max_size=5),
       st.sampled_from(["*", "POST"]))
def test_a_versioned_request_matches_like_its_unversioned_path(first, rest, parts, method):
    pattern = "/" + "/".join([first, *rest])
    path = "/" + "/".join(parts)
    matcher = Matcher([Ep(method, pattern)])
    assert matcher.match("POST", "/v1.41" + path) == matcher.match("POST", path), pattern


@given(st.lists(st.sampled_from(["", ".", "..", "v1.41", "v01.41.0", "containers", "a%2Fb",
                                 "%2e", "%2E%2e", "%63", "json", "x?y=/..", "#z", "a.", "a+b",
                                 "%76%31.41"]), min_size=1, max_size=7).map("/".join),
       st.sampled_from(["", "/", "?q=1"]))
def test_canonical_path_is_idempotent(path, tail):
    target = "/" + path + tail
    canonical = canonical_path(target)
    if canonical is not None:
        assert canonical_path(canonical) == canonical


unicode_segment = st.text(
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="\x7f"),
    min_size=1, max_size=6,
).filter(lambda s: s not in (".", "..") and "/" not in s)


@given(st.lists(unicode_segment, min_size=1, max_size=4))
def test_any_name_round_trips_through_percent_encoding(names):
    # Free-form names (networks accept "a%b", "a?b", "a b", "café") come back decoded.
    path = "/networks/" + "/".join(names)
    assert canonical_path(quote(path, safe="/")) == path
    assert canonical_path("/" + quote(path[1:], safe="")) == path


# Exactness of unversioned_globs against a brute-force search over versions: a glob of at most
# six tokens constrains at most four version characters, and these four stand for all others.
VERSIONS = ["".join(chars) for n in range(1, 5) for chars in itertools.product("014.", repeat=n)]
glob_token = st.sampled_from(["/", "v", "1", ".", "4", "a", "*", "?", "[0-9]", "[!v]", "[/v]"])


@given(st.lists(glob_token, min_size=1, max_size=6).map("".join),
       st.lists(st.sampled_from(["a", "1", "v", "4.", "", "v1"]), min_size=1, max_size=3)
       .map(lambda parts: "/" + "/".join(parts)))
def test_unversioned_globs_are_exact(pattern, path):
    by_globs = any(fnmatchcase(path, glob) for glob in unversioned_globs(pattern))
    by_search = any(fnmatchcase(f"/v{v}{path}", pattern) for v in VERSIONS)
    assert by_globs == by_search, (pattern, path, unversioned_globs(pattern))


@given(st.text(string.ascii_letters[:6] + string.digits[:3] + "/.%?#;~vV2Ff \t\x80", max_size=24))
def test_the_fast_path_agrees_with_the_full_model(tail):
    target = "/" + tail
    try:
        expected = _canonical_slow(target)
    except SpellingError:
        with pytest.raises(SpellingError):
            canonical_path(target)
    else:
        assert canonical_path(target) == expected
