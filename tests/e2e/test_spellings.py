"""How the real dockerd routes odd spellings of a request target, and that ``Matcher`` agrees.

Each case is sent as raw bytes over the daemon's unix socket (no client library, so nothing
normalises the target on the way) and the daemon's behaviour is checked: routed to container
create, start or list; a 301 redirect; or an answer that acts on nothing. Then the same target
goes through ``Matcher`` with one endpoint per route, which must pick exactly the endpoint the
daemon routed to, nothing for a redirect, or refuse. docs/spellings.md explains the table.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from powerstrip.core.paths import SpellingError, canonical_path, split_version
from powerstrip.hooks.matching import Matcher
from powerstrip_dev.engine import Engine
from tests.rawhttp import Response, call

API = "1.41"
BODY = json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode()


@dataclass(frozen=True)
class Ep:
    method: str
    pattern: str


CREATE = Ep("POST", "/*/containers/create")
START = Ep("POST", "/*/containers/*/start")
LIST = Ep("GET", "/*/containers/json")
INSPECT = Ep("GET", "/*/containers/*/json")
MATCHER = Matcher([CREATE, START, LIST, INSPECT])
HOOKS = {"create": [CREATE], "start": [START], "list": [LIST], "inspect": [INSPECT], "none": []}


def send(engine: Engine, method: bytes, target: bytes, body: bytes | None = None) -> Response:
    """One request, exactly as given, on a fresh connection to the daemon."""
    headers = None if body is None else {"Content-Type": "application/json"}
    return call(engine.host, method.decode("latin-1"), target.decode("latin-1"), body, headers)


def exists(engine: Engine, name: str) -> bool:
    return send(engine, b"GET", f"/v{API}/containers/{name}/json".encode()).status == 200


def remove(engine: Engine, ident: str) -> None:
    send(engine, b"DELETE", f"/v{API}/containers/{ident}?force=1".encode())


@dataclass(frozen=True)
class Case:
    """A spelling, what the daemon does with it, and which endpoint's hooks must run.

    ``body`` goes with the request (a container config for the create cases). ``daemon`` is
    one of: ``created`` (201, the container is named as asked), ``created-unnamed`` (201, the
    name in the query was not used), ``started`` (the fixture container was started),
    ``no-such:NAME`` (routed, for a container named NAME that does not exist), ``listed`` (200
    and a JSON list), ``301:LOCATION``, ``404`` (no route: "page not found"), ``400`` or ``200``
    (answered, nothing done). ``hooks`` names the endpoint whose hooks run (``create``,
    ``start``, ``list``, ``inspect``), or is ``none`` or ``refused``.
    """

    method: str
    target: str
    daemon: str
    hooks: str
    body: bytes | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.target!r}"


def create(target: str, daemon: str, hooks: str) -> Case:
    """A POST with a container config: a create, whatever the spelling does to its path."""
    return Case("POST", target, daemon, hooks, BODY)


C = "/v1.41/containers/create?name={name}"
CASES = [
    # -- POST /containers/create ----------------------------------------------------------
    create(C, "created", "create"),
    create("/containers/create?name={name}", "created", "create"),
    create("/v1.41%2Fcontainers%2Fcreate?name={name}", "created", "create"),
    create("/v1.41%2fcontainers%2fcreate?name={name}", "created", "create"),
    create("/v1.41/%63ontainers/create?name={name}", "created", "create"),
    create("/v1.41/containers/creat%65?name={name}", "created", "create"),
    create("/%761.41/containers/create?name={name}", "created", "create"),
    create("/v1%2e41/containers/create?name={name}", "created", "create"),
    create("/%76%31%2E%34%31%2F%63%6F%6E%74%61%69%6E%65%72%73%2F%63%72%65%61%74%65"
           "?name={name}", "created", "create"),
    create("/v1.41.0/containers/create?name={name}", "created", "create"),
    create("/v01.41/containers/create?name={name}", "created", "create"),
    create("/v1.041/containers/create?name={name}", "created", "create"),
    create("/v1.41./containers/create?name={name}", "created", "create"),
    create("/v1.40/containers/create?name={name}", "created", "create"),
    create("/v1.40.99/containers/create?name={name}", "created", "create"),
    create("/v1.12/containers/create?name={name}", "created", "create"),
    create("/v1.41/containers/create?name={name}&name=other", "created", "create"),
    create("/v1.41/containers/create?Name={name}", "created-unnamed", "create"),
    create("/v1.41/containers/create??name={name}", "created-unnamed", "create"),
    create("/v1.41/containers/create?", "created-unnamed", "create"),
    # routed, then refused by the version check or the handler: hooks run, nothing is created
    create("/v1/containers/create?name={name}", "400", "create"),
    create("/v1.11/containers/create?name={name}", "400", "create"),
    create("/v.41/containers/create?name={name}", "400", "create"),
    create("/v1..41/containers/create?name={name}", "400", "create"),
    create("/v9.99/containers/create?name={name}", "400", "create"),
    create("/v1.41.99/containers/create?name={name}", "400", "create"),
    create("/v1.99999999999999999999/containers/create?name={name}", "400", "create"),
    create("/v1.41/containers/create?name={name};x=1", "400", "create"),
    create("/v1.41/containers/create?name={name}#frag", "400", "create"),
    # not clean: a 301 to the cleaned path, the query kept, nothing done
    create("//v1.41/containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41//containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/./containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/x/../containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/containers%2F%2Fcreate?name={name}", "301:" + C, "none"),
    create("/%2Fv1.41/containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/%2e/containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/x/%2e%2e/containers/create?name={name}", "301:" + C, "none"),
    create("/v1.41/containers/create/.?name={name}", "301:" + C, "none"),
    create("/v1.41/containers/create%2F.?name={name}", "301:" + C, "none"),
    create("/v1.41/containers/create/..?name={name}", "301:/v1.41/containers?name={name}", "none"),
    create("/v1.41/x/..//containers/create?name={name}", "301:" + C, "none"),
    # a path of its own that no route matches
    # ("*" in the glob is any first segment, so the create endpoint's hooks run)
    create("/V1.41/containers/create?name={name}", "404", "create"),
    create("/v/containers/create?name={name}", "404", "create"),
    create("/v1.4a/containers/create?name={name}", "404", "create"),
    create("/v1.41/containers/create/?name={name}", "404", "none"),
    create("/v1.41/containers/create%2F?name={name}", "404", "none"),
    create("/v1.41/Containers/create?name={name}", "404", "none"),
    create("/v1.41/containers/Create?name={name}", "404", "none"),
    create("/v1.41/containers/create;x=1?name={name}", "404", "none"),
    create("/v1.41/containers/create#frag?name={name}", "404", "none"),
    create("/v1.41\\containers\\create?name={name}", "404", "none"),
    create("/v1.41%252Fcontainers%252Fcreate?name={name}", "404", "none"),
    create("/v1.41/containers/create%3Fx=1?name={name}", "404", "none"),
    create("/v1.41/containers/create%20?name={name}", "404", "none"),
    create("/v1.41/containers/create%2e?name={name}", "404", "none"),
    create("/v1.41/containers/create+?name={name}", "404", "none"),
    create("/v1.41/containers/create%C3%A9?name={name}", "404", "none"),
    Case("post", C, "404", "none", BODY),
    Case("Post", C, "404", "none", BODY),
    Case("PUT", C, "404", "none", BODY),
    Case("GET", C, "404", "none", BODY),
    Case("OPTIONS", C, "200", "none", BODY),
    create("*", "301:/%2A", "none"),
    Case("OPTIONS", "*", "200", "none", BODY),
    # refused by the proxy: the daemon answers 400, or routes something no client sends
    create("/v1.41/containers/create%zz?name={name}", "400", "refused"),
    create("/v1.41/containers/create%?name={name}", "400", "refused"),
    create("/v1.41/containers/create%2?name={name}", "400", "refused"),
    create("%2Fv1.41/containers/create?name={name}", "400", "refused"),
    create(":/v1.41/containers/create?name={name}", "400", "refused"),
    create("/v1.41/containers/create\t?name={name}", "400", "refused"),
    create("/v1.41/containers/create\x7f?name={name}", "400", "refused"),
    create("*?name={name}", "400", "refused"),
    create("/v1.41/containers/create%00?name={name}", "404", "refused"),
    create("/v1.41/containers/create%0A?name={name}", "404", "refused"),
    create("/v1.41/containers/create%E9?name={name}", "404", "refused"),
    create("/v1.41/containers/create\xe9?name={name}", "404", "refused"),
    # absolute-form targets (the proxy's HTTP parser already refuses these; the model holds)
    create("http://docker/v1.41/containers/create?name={name}", "created", "create"),
    create("HTTP://docker/v1.41/containers/create?name={name}", "created", "create"),
    create("foo://docker/v1.41/containers/create?name={name}", "created", "create"),
    create("http://user@docker/v1.41/containers/create?name={name}", "created", "create"),
    create("http://[::1]:99/v1.41/containers/create?name={name}", "created", "create"),
    create("http:/v1.41/containers/create?name={name}", "created", "create"),
    create("http:///v1.41/containers/create?name={name}", "created", "create"),
    create("v1.41:/containers/create?name={name}", "created", "create"),
    create("http://docker/v1.41%2Fcontainers/create?name={name}", "created", "create"),
    create("http://docker//v1.41/containers/create?name={name}", "301:http://docker" + C, "none"),
    create("http://docker/v1.41/./containers/create?name={name}", "301:http://docker" + C, "none"),
    create("http:v1.41/containers/create?name={name}",
           "301:http:v1.41/containers/create?name={name}", "none"),
    create("http://docker?name={name}", "301:http://docker/?name={name}", "none"),
    # a bad authority: Go refuses it, the matcher does not look at it (hooks for a refusal)
    create("http://docker:xx/v1.41/containers/create?name={name}", "400", "create"),
    create("http://%zz/v1.41/containers/create?name={name}", "400", "create"),
    # -- POST /containers/{id}/start --------------------------------------------------------
    Case("POST", "/v1.41/containers/{c}/start", "started", "start"),
    Case("POST", "/containers/{c}/start", "started", "start"),
    Case("POST", "/v1.41/containers/{c%}/start", "started", "start"),
    Case("POST", "/v1.41/containers%2F{c}%2Fstart", "started", "start"),
    Case("POST", "/v1.41/containers/{c}/%73tart", "started", "start"),
    Case("POST", "/v01.41.0/containers/{c}/start", "started", "start"),
    Case("POST", "/v1.41/containers/abc%2Fdef/start", "no-such:abc/def", "start"),
    Case("POST", "/v1.41/containers/a/b/start", "no-such:a/b", "start"),
    Case("POST", "/containers/{c}%3F/start", "no-such:{c}?", "start"),
    Case("POST", "/containers/{c}%25/start", "no-such:{c}%", "start"),
    Case("POST", "/v1.41/containers/{c}/start/", "404", "none"),
    Case("POST", "/v1.41/containers/{c}/Start", "404", "none"),
    Case("POST", "/v1.41/containers/{c}//start", "301:/v1.41/containers/{c}/start", "none"),
    Case("POST", "/v1.41/containers/x/../{c}/start", "301:/v1.41/containers/{c}/start", "none"),
    Case("POST", "/containers/{c}/start%2F.", "301:/containers/{c}/start", "none"),
    # -- GET /containers/json ---------------------------------------------------------------
    Case("GET", "/v1.41/containers/json", "listed", "list"),
    Case("GET", "/containers/json?all=1", "listed", "list"),
    Case("GET", "/v1.41/containers%2Fjson", "listed", "list"),
    Case("GET", "/v1.41/containers/%6Ason?all=1", "listed", "list"),
    Case("GET", "/v1.41//containers/json?all=1", "301:/v1.41/containers/json?all=1", "none"),
    Case("GET", "/v1.41/containers/json/", "404", "none"),
    Case("GET", "/v1.41/containers/json%3Fall=1", "404", "none"),
    Case("GET", "/v1.41/containers/json#x", "404", "none"),
    Case("HEAD", "/v1.41/containers/json", "404", "none"),
    # -- GET /containers/{id}/json: names made of dots are names, not dot segments ----------
    Case("GET", "/v1.41/containers/.../json", "no-such:...", "inspect"),
    Case("GET", "/v1.41/containers/%2e%2e%2e/json", "no-such:...", "inspect"),
    Case("GET", "/v1.41/containers/.x/json", "no-such:.x", "inspect"),
    Case("GET", "/v1.41/containers/x./json", "no-such:x.", "inspect"),
    Case("GET", "/v1.41/containers/%2e%2e/json", "301:/v1.41/json", "none"),
]


@pytest.fixture(scope="module")
def container(engine: Engine) -> Iterator[str]:
    """A stopped container whose start spellings the tests send; it runs ``true`` and exits."""
    name = f"ps-spell-{uuid.uuid4().hex[:10]}"
    created = send(engine, b"POST", f"/v{API}/containers/create?name={name}".encode(), BODY)
    assert created.status == 201, created.body
    try:
        yield name
    finally:
        remove(engine, name)


def fill(text: str, name: str, container: str) -> str:
    encoded = "".join(f"%{ord(char):02X}" for char in container)
    return text.replace("{name}", name).replace("{c%}", encoded).replace("{c}", container)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_daemon_routes_spelling_as_the_matcher_assumes(
    engine: Engine, container: str, case: Case
) -> None:
    name = f"ps-spell-{uuid.uuid4().hex[:10]}"
    target = fill(case.target, name, container)
    response = send(engine, case.method.encode(), target.encode("latin-1"), case.body)
    created = response.status == 201 and b'"Id"' in response.body
    try:
        _check_daemon(engine, case, response, name, container)
    finally:
        if created:
            remove(engine, json.loads(response.body)["Id"])
        if "{name}" in case.target and not created:
            assert not exists(engine, name), f"{case}: the daemon acted after all"
    _check_matcher(case, target)


def _check_daemon(
    engine: Engine, case: Case, response: Response, name: str, container: str
) -> None:
    outcome = case.daemon
    seen = f"{case}: daemon answered {response.status} {response.body[:200]!r}"
    if outcome == "created":
        assert response.status == 201, seen
        assert exists(engine, name), f"{case}: created, but not as {name}"
    elif outcome == "created-unnamed":
        assert response.status == 201, seen
        assert not exists(engine, name), f"{case}: the name in the query was used after all"
    elif outcome == "started":
        assert response.status in (204, 304), seen
    elif outcome.startswith("no-such:"):
        wanted = fill(outcome.removeprefix("no-such:"), name, container)
        assert response.status == 404, seen
        assert json.loads(response.body)["message"] == f"No such container: {wanted}", seen
    elif outcome == "listed":
        assert response.status == 200, seen
        assert isinstance(json.loads(response.body), list), seen
    elif outcome.startswith("301:"):
        assert response.status == 301, seen
        location = fill(outcome.removeprefix("301:"), name, container)
        assert response.header("location") == location, seen
    elif outcome == "404":
        assert response.status == 404, seen
        assert case.method == "HEAD" or b"page not found" in response.body, seen
    else:
        assert response.status == int(outcome), seen


def _check_matcher(case: Case, target: str) -> None:
    if case.hooks == "refused":
        with pytest.raises(SpellingError):
            MATCHER.match(case.method, target)
        return
    assert MATCHER.match(case.method, target) == HOOKS[case.hooks], case
    if case.daemon.startswith("301:"):
        assert canonical_path(target) is None, case
    # Nothing the daemon acts on may slip past the endpoint it reaches.
    if case.daemon in ("created", "created-unnamed", "started", "listed"):
        assert case.hooks != "none", case


@pytest.mark.timeout(60)
def test_a_followed_redirect_comes_back_clean(engine: Engine) -> None:
    """A client following the 301 sends the Location as a new request, which then matches."""
    response = send(engine, b"GET", b"/v1.41/x/%2e%2e//containers/json?all=1")
    assert response.status == 301
    location = response.header("location")
    assert MATCHER.match("GET", location) == [LIST]
    followed = send(engine, b"GET", location.encode())
    assert followed.status == 200 and isinstance(json.loads(followed.body), list)


def _mutate(rng: random.Random, target: str) -> str:
    """One random respelling step, kept or not by the daemon's rules alike."""
    slashes = [i for i, char in enumerate(target) if char == "/" and i > 0]
    inner = rng.randrange(1, len(target))
    kind = rng.randrange(9)
    if kind == 0:  # percent-encode one character, upper or lower hex
        escape = f"%{ord(target[inner]):02X}"
        return target[:inner] + (escape if rng.random() < 0.5 else escape.lower()) + target[
            inner + 1:]
    if kind == 1 and slashes:  # an encoded slash
        i = rng.choice(slashes)
        return target[:i] + "%2F" + target[i + 1:]
    if kind == 2 and slashes:  # a double slash
        i = rng.choice(slashes)
        return target[:i] + "/" + target[i:]
    if kind == 3 and slashes:  # a dot segment, plain or encoded
        i = rng.choice(slashes)
        return target[:i] + rng.choice(["/.", "/%2e", "/x/..", "/x/%2E%2E", "/.."]) + target[i:]
    if kind == 4:  # a trailing slash or dot segment
        return target + rng.choice(["/", "/.", "%2F", "%2F.", "/.."])
    if kind == 5 and target[inner].isalpha():  # another case
        return target[:inner] + target[inner].swapcase() + target[inner + 1:]
    if kind == 6:  # a dot-named segment that is a name, not "." or ".."
        i = rng.choice(slashes) if slashes else 0
        return target[:i] + rng.choice(["/...", "/.x"]) + target[i:]
    if kind == 7:  # an invalid escape
        return target[:inner] + rng.choice(["%zz", "%4"]) + target[inner:]
    return target


@pytest.mark.timeout(180)
def test_random_spellings_agree_with_the_model(engine: Engine, container: str) -> None:
    """Random respellings of one GET: the daemon's answer must be what canonical_path predicts.

    Predicted: SpellingError -> 400; None -> 301; a path that is the inspect route of the
    container (unversioned or a version the daemon serves) -> 200 and the inspect endpoint
    matched; any other path -> neither 200 nor 301.
    """
    rng = random.Random(20151)
    wanted = f"/containers/{container}/json"
    bases = [f"/v{API}{wanted}", wanted, f"/v01.41.0{wanted}", f"/v1.40{wanted}", f"/v1{wanted}",
             f"/v9.99{wanted}", f"/V1.41{wanted}"]
    targets = set()
    while len(targets) < 300:
        target = rng.choice(bases)
        for _ in range(rng.randrange(1, 4)):
            target = _mutate(rng, target)
        targets.add(target)
    disagreements = []
    for target in sorted(targets):
        status = send(engine, b"GET", target.encode()).status
        path: str | None = "(refused)"
        try:
            path = canonical_path(target)
        except SpellingError:
            expected = "400"
        else:
            if path is None:
                expected = "301"
            else:
                version, rest = split_version(path)
                routed = rest == wanted and version in (None, "1.41", "1.40")
                expected = "200" if routed else "neither 200 nor 301"
                if routed and MATCHER.match("GET", target) != [INSPECT]:
                    disagreements.append(f"{target!r}: inspect endpoint not matched")
        if expected.startswith("neither"):
            agree = status not in (200, 301)
        else:
            agree = str(status) == expected
        if not agree:
            disagreements.append(f"{target!r}: daemon {status}, model {expected} ({path=})")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.timeout(60)
def test_free_form_names_are_matched_decoded(engine: Engine) -> None:
    """Network names may hold "%", "?", spaces and any letter, so their escapes are real traffic.

    The proxy must neither refuse them nor match them on their spelling: the canonical path
    holds the name as the daemon sees it.
    """
    inspect = Ep("GET", "/*/networks/*")
    matcher = Matcher([inspect])
    stem = f"ps-spell-{uuid.uuid4().hex[:8]}"
    for name in (f"{stem}-a%b", f"{stem}-a?b", f"{stem} a b", f"{stem}-caf\u00e9", f"{stem}-%41"):
        config = json.dumps({"Name": name, "Driver": "bridge", "Internal": True}).encode()
        created = send(engine, b"POST", f"/v{API}/networks/create".encode(), config)
        assert created.status == 201, created.body
        ident = json.loads(created.body)["Id"]
        try:
            target = f"/v{API}/networks/{quote(name, safe='')}"
            shown = send(engine, b"GET", target.encode())
            assert shown.status == 200 and json.loads(shown.body)["Id"] == ident, shown.body
            assert canonical_path(target) == f"/v{API}/networks/{name}"
            assert matcher.match("GET", target) == [inspect]
        finally:
            send(engine, b"DELETE", f"/v{API}/networks/{ident}".encode())
