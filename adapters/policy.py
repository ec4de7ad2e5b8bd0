#!/usr/bin/env python3
"""The policy adapter: refuses what an operator forbids, read from a YAML rules file.

::

    python adapters/policy.py --listen 127.0.0.1:9100 --rules adapters/policy.yml

Rules (see ``adapters/policy.yml`` and ``docs/policy.md``): privileged containers and exec
sessions, the host's network or PID namespace, capability additions, bind mounts outside allowed
host paths (``Binds``, ``Mounts``, and named volumes that are binds in disguise), and images
outside an allowlist. The rules may differ by client (``clients:`` sections naming a unix user, a
unix group or a certificate's common name), for which the adapter is mapped with ``protocol: 2``.
A refusal is ``403 {"message": "refused by policy rule NAME: ...; rules for CLIENT: SECTION"}``,
which the docker CLI prints as ``Error response from daemon: ...``.

The daemon reads requests more leniently than ``json.loads`` does, and the policy must judge
what the daemon will do, not what a naive reading sees. So request bodies are read the way
dockerd's Go ``encoding/json`` reads them (``go_decode``): object keys match struct fields
case-insensitively under Unicode simple folding (``"PRIVILEGED"``, ``"Hoſtconfig"`` with U+017F),
a repeated key decodes *into* the value already there (objects and maps merge, slices reuse their
elements), only the first JSON value counts, and the create body's deprecated top-level
HostConfig fields are read as well. Anything the policy cannot read is refused: it never guesses
in the request's favour. ``docs/policy.md`` records the probes of a real dockerd behind each rule.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from powerstrip.adapter import Adapter, Client, Refuse, Request
from powerstrip.core.paths import SpellingError, canonical_path, clean_path
from powerstrip.hooks import yamlfile
from powerstrip.hooks.matching import Matcher, parse_endpoint_key
from powerstrip.kit.gojson import (
    ANY,
    BOOL,
    STRING,
    STRSLICE,
    GoJSONError,
    GoSlice,
    Map,
    Ptr,
    Slice,
    Struct,
    go_decode,
    go_fold_equal,
)

__all__ = [
    "ANY", "BOOL", "CREATE_BODY", "EXEC_BODY", "HOST_CONFIG", "IDENTITIES", "MOUNT",
    "SERVICE_SPEC", "STRING", "STRSLICE", "UPDATE_BODY", "VOLUME_BODY", "AllowedEndpoint",
    "Applied", "ClientSection", "GoJSONError", "GoSlice", "ImageRef", "ImageRefError", "Map",
    "Ptr", "Rules", "RulesError", "Slice", "Struct", "Violation", "allowed_path", "applied_rules",
    "check_build", "check_container_update", "check_create", "check_endpoint", "check_exec",
    "check_image_naming", "check_plugin", "check_service", "check_start", "check_swarm",
    "check_volume_create", "clean_path", "go_decode", "go_fold_equal", "host_configs",
    "host_network_violation", "image_allowed", "load_rules", "main", "make_adapter",
    "normalize_capability", "parse_image_reference", "parse_rules", "service_networks",
]

# -- the request types dockerd 20.10 decodes ---------------------------------------------------

_DRIVER = Struct((("Name", STRING), ("Options", Map(STRING))))
_VOLUME_OPTIONS = Struct((("NoCopy", ANY), ("Labels", ANY), ("DriverConfig", Ptr(_DRIVER))))
#: api/types/mount.Mount, the fields the policy reads.
MOUNT = Struct((
    ("Type", STRING), ("Source", STRING), ("Target", STRING),
    ("VolumeOptions", Ptr(_VOLUME_OPTIONS)),
))
#: api/types/container.HostConfig, the fields the policy reads.
HOST_CONFIG = Struct((
    ("Binds", Slice(STRING)), ("NetworkMode", STRING), ("CapAdd", STRSLICE),
    ("PidMode", STRING), ("Privileged", BOOL), ("Mounts", Slice(MOUNT)),
))
#: runconfig.ContainerConfigWrapper (the create body, and the start body before API 1.24): the
#: embedded *container.Config (of which only Image matters here), "HostConfig", and the embedded
#: *container.HostConfig whose fields are promoted to the top level.
CREATE_BODY = Struct((("Image", STRING), ("HostConfig", Ptr(HOST_CONFIG)), *HOST_CONFIG.fields))
#: api/types.ExecConfig.
EXEC_BODY = Struct((("Privileged", BOOL),))
#: api/types/volume.VolumeCreateBody.
VOLUME_BODY = Struct((("Driver", STRING), ("DriverOpts", Map(STRING)), ("Name", STRING)))
#: container.UpdateConfig is Resources and RestartPolicy: dockerd ignores every HostConfig field
#: the policy reads. They are read anyway, in both places a create carries them, so that a
#: daemon which one day applies them finds them judged.
UPDATE_BODY = CREATE_BODY
#: api/types/swarm.NetworkAttachmentConfig: Target is a network's name, ID or ID prefix.
_NETWORK_ATTACHMENT = Struct((("Target", STRING),))
#: api/types/swarm.ContainerSpec, the fields the policy reads (API 1.41 added CapabilityAdd).
_CONTAINER_SPEC = Struct((
    ("Image", STRING), ("Mounts", Slice(MOUNT)), ("CapabilityAdd", Slice(STRING)),
))
#: api/types/swarm.TaskSpec: a task runs a container (ContainerSpec) or, with Runtime "plugin",
#: installs a plugin (PluginSpec) on every node it is scheduled to.
_TASK_SPEC = Struct((
    ("PluginSpec", ANY), ("ContainerSpec", Ptr(_CONTAINER_SPEC)),
    ("Networks", Slice(_NETWORK_ATTACHMENT)), ("Runtime", STRING),
))
#: api/types/swarm.ServiceSpec, the body of ``POST /services/create`` and
#: ``POST /services/{id}/update``; its top-level Networks is the deprecated spelling of
#: TaskTemplate.Networks, which the daemon still reads.
SERVICE_SPEC = Struct((("TaskTemplate", _TASK_SPEC), ("Networks", Slice(_NETWORK_ATTACHMENT))))


def host_configs(body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The HostConfigs a decoded create (or old start) body carries, each with where it was.

    dockerd uses ``HostConfig`` when it is there (non-null) and the deprecated top-level fields
    otherwise (runconfig's ``getHostConfig``). Both are checked, so the policy needs no opinion
    on which the daemon picks.
    """
    out = []
    inner = body.get("HostConfig")
    if inner is not None:
        out.append(("HostConfig.", inner))
    top = {name: body[name] for name, _ in HOST_CONFIG.fields if name in body}
    if top:
        out.append(("", top))
    return out


# =================================================================================================
# Normalisation: paths, capabilities, image references
# =================================================================================================


def allowed_path(path: str, allowed: Iterable[str], resolve: bool = True) -> bool:
    """Whether the absolute host path ``path`` is one of ``allowed`` (cleaned absolute paths) or
    below one. With ``resolve``, symbolic links are followed too (the kernel follows them when
    it mounts), and the resolved path must be allowed as well."""
    candidates = [clean_path(path)]
    if resolve:
        candidates.append(os.path.realpath(candidates[0]))
    return all(
        any(root == "/" or p == root or p.startswith(root + "/") for root in allowed)
        for p in candidates
    )


def _go_upper(text: str) -> str:
    # Go's strings.ToUpper maps rune by rune (simple mapping): "ſ" is "S", "ß" stays "ß".
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in text)


def normalize_capability(cap: str) -> str:
    """A capability as dockerd reads it: upper case, ``CAP_`` prefixed, ``ALL`` kept as is
    (``sys_admin``, ``cap_sys_admin`` and ``ſys_admin`` all mean ``CAP_SYS_ADMIN``)."""
    upper = _go_upper(cap)
    if upper == "ALL" or upper.startswith("CAP_"):
        return upper
    return "CAP_" + upper


_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-*)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
# What dockerd may resolve as an image ID (or ID prefix) rather than a name: a full ID, and
# any all-hex name or "sha256:" string, which is looked up among IDs when no such tag exists.
_ID_LIKE = re.compile(r"[0-9a-f]+|sha256:.*", re.DOTALL)


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: ``docker.io/library/busybox``, tag, digest (None if absent)."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text


class ImageRefError(ValueError):
    """An image reference the policy cannot judge by name."""


def parse_image_reference(ref: str, *, id_like: bool = False) -> ImageRef:
    """Normalise ``ref`` as docker's ``reference.ParseNormalizedNamed`` does: ``busybox``,
    ``library/busybox``, ``docker.io/busybox`` and ``index.docker.io/library/busybox`` are all
    ``docker.io/library/busybox``.

    Raises ImageRefError for what is not a name: a syntax error, or anything dockerd may take for
    an image ID (``sha256:...``, or an all-hex string such as ``64e93288725a``, which dockerd
    matches against ID prefixes when no image has that name), unless ``id_like`` is true: where
    a reference can only be a name (the ``repo`` a tag creates), ``cafe`` is ``.../cafe``.
    """
    if not id_like and _ID_LIKE.fullmatch(ref):
        raise ImageRefError(f"{ref!r} may be an image ID; name the image instead")
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ImageRefError(f"invalid digest in {ref!r}")
    last_slash = name.rfind("/")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise ImageRefError(f"invalid tag in {ref!r}")
    slash = name.find("/")
    first = name[:slash]
    if slash == -1 or (not any(c in first for c in ".:") and first != "localhost"):
        domain, remainder = "docker.io", name
    else:
        domain, remainder = first, name[slash + 1:]
        if not _DOMAIN.fullmatch(domain):
            raise ImageRefError(f"invalid registry in {ref!r}")
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    if not all(_PATH_COMPONENT.fullmatch(part) for part in remainder.split("/")):
        raise ImageRefError(f"invalid reference format {ref!r} (names are lower case)")
    repository = f"{domain}/{remainder}"
    if len(repository) > 255:
        raise ImageRefError(f"repository name too long in {ref!r}")
    return ImageRef(repository, tag, digest or None)


def image_allowed(ref: ImageRef, allowed: Iterable[ImageRef]) -> bool:
    """Whether ``ref`` is allowed by an entry of ``allowed``: an entry without tag or digest allows
    the whole repository; with a tag, that tag only (a reference without one means ``latest``);
    with a digest, that digest only."""
    for entry in allowed:
        if entry.repository != ref.repository:
            continue
        if entry.digest is not None:
            if ref.digest == entry.digest and ref.tag in (None, entry.tag):
                return True
        elif entry.tag is not None:
            if ref.digest is None and (ref.tag or "latest") == entry.tag:
                return True
        else:
            return True
    return False


# =================================================================================================
# Rules
# =================================================================================================


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file, the line and the fault."""


@dataclass(frozen=True)
class AllowedEndpoint:
    """An entry of the ``endpoints`` allowlist: an endpoint key as the adapters file writes one
    (``METHOD PATH-GLOB``), matched by the proxy's own matcher."""

    method: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


@dataclass(frozen=True)
class Rules:
    """What the policy forbids. A list rule left as None is not enforced; ``swarm`` and
    ``plugins`` are forbidden unless allowed, since either hands the node to what no request
    to this daemon shows."""

    privileged: bool = False  #: forbid privileged containers and exec sessions
    host_network: bool = False  #: forbid NetworkMode host (containers, builds, services)
    host_pid: bool = False  #: forbid PidMode host
    cap_add: frozenset[str] | None = None  #: capabilities that may be added (normalised)
    bind_mounts: tuple[str, ...] | None = None  #: host paths binds may use (cleaned)
    resolve_symlinks: bool = True  #: follow links in bind sources (the adapter shares the host)
    images: tuple[ImageRef, ...] | None = None  #: images containers may run
    swarm: bool = True  #: forbid initialising or joining a swarm
    plugins: bool = True  #: forbid installing, configuring and enabling managed plugins
    endpoints: tuple[AllowedEndpoint, ...] | None = None  #: the only endpoints that may be used
    #: the per-client sections, in file order; the first that names a client gives its rules
    clients: tuple[ClientSection, ...] = ()
    sources: dict[str, str] = field(default_factory=dict, compare=False)  #: rule -> "file:line"
    where: str = field(default="", compare=False)  #: "file:line" of the rules, "" if made in code

    def section_for(self, client: Client | None) -> ClientSection | None:
        """The first ``clients`` section that names ``client``, or None: the default rules
        apply. A client the transport cannot name (None on a protocol 1 call, plain TCP, TLS
        without a verified certificate, a unix uid with no user name) is named by none."""
        return next((section for section in self.clients if section.matches(client)), None)


#: What a ``clients`` section may name a client by, each a key of the section.
IDENTITIES = ("user", "group", "common_name")


@dataclass(frozen=True)
class ClientSection:
    """An entry of ``clients``: whom it names (``kind``, one of IDENTITIES, and ``name``) and the
    rules they get, which are the default rules with each rule the section sets in place of the
    default's (``rules``, complete; its ``clients`` empty)."""

    kind: str
    name: str
    rules: Rules
    where: str = field(default="", compare=False)  #: "file:line" of the section

    def matches(self, client: Client | None) -> bool:
        """Whether the section names ``client``. ``user`` and ``group`` name unix clients whose
        uid resolves to a user name (``group``: any of its groups, primary or supplementary);
        ``common_name`` names TLS clients by their verified certificate's subject CN."""
        if client is None:
            return False
        if self.kind == "common_name":
            return client.certificate is not None and client.certificate.common_name == self.name
        if client.transport != "unix" or client.user is None:
            return False
        if self.kind == "user":
            return client.user == self.name
        return self.name in client.groups

    def describe(self) -> str:
        """How refusals name the section: ``the clients section for user ci (policy.yml:44)``."""
        what = "common name" if self.kind == "common_name" else self.kind
        return f"the clients section for {what} {self.name}{_at(self.where)}"


def _at(where: str) -> str:
    # The file's name and the line, not its path: the message goes to the client.
    return f" ({Path(where).name})" if where else ""


@dataclass(frozen=True)
class Violation:
    """A rule a request breaks."""

    rule: str
    why: str

    def message(self) -> str:
        """The refusal's text, naming the rule."""
        return f"refused by policy rule {self.rule}: {self.why}"


_SWITCHES = ("privileged", "host_network", "host_pid", "swarm", "plugins")
_RULE_NAMES = (*_SWITCHES, "cap_add", "bind_mounts", "images", "endpoints")


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    """Rules from the YAML ``text``; RulesError with ``source`` and the line for any fault.

    ``version: 1`` (optional), ``rules:``, a mapping of rule names to settings: ``forbid`` or
    ``allow`` for privileged, host_network, host_pid, swarm and plugins; ``forbid`` or
    ``{allow: [...]}`` for cap_add; ``{allow: [...]}`` for bind_mounts (with
    ``resolve_symlinks``), images and endpoints (endpoint keys, ``"GET /containers/json"``);
    and ``clients:`` (optional), a list of sections each naming one ``user``, ``group`` or
    ``common_name`` and giving ``rules`` that replace the default rules of the same names.
    """
    try:
        doc = yamlfile.load(text, source)
    except yamlfile.YamlError as exc:
        raise RulesError(str(exc)) from None

    def fail(where: yamlfile.LinedDict, key: str, message: str) -> RulesError:
        return RulesError(f"{_line(source, where, key)}: {message}")

    if not isinstance(doc, dict):
        raise RulesError(f"{source}: a rules file is a mapping with a 'rules' key")
    for key in doc:
        if key not in ("version", "rules", "clients"):
            raise fail(doc, key, f"unknown key {key!r}; expected 'version', 'rules' and "
                                 "'clients'")
    if doc.get("version", 1) != 1:
        raise fail(doc, "version", f"version must be 1, not {doc['version']!r}")
    rules = doc.get("rules")
    if not isinstance(rules, dict):
        raise fail(doc, "rules", "'rules' must be a mapping of rule names to settings")
    settings, sources = _rule_settings(rules, source, fail, "")
    clients = doc.get("clients", [])
    if not isinstance(clients, list):
        raise fail(doc, "clients", "'clients' must be a list of sections, each naming a user, "
                                   "group or common_name and giving its rules")
    sections: list[ClientSection] = []
    named: dict[tuple[str, str], str] = {}
    for number, entry in enumerate(clients, 1):
        if not isinstance(entry, dict) or not entry:
            raise fail(doc, "clients", f"clients entry {number} must be a mapping such as "
                                       "{user: NAME, rules: {...}}")
        section = _client_section(entry, number, settings, sources, source, fail)
        key = (section.kind, section.name)
        if key in named:
            # The first section that names a client wins: this one could never apply.
            raise fail(entry, section.kind,
                       f"clients entry {number} names {section.kind} {section.name!r} again "
                       f"(also at {named[key]}); only the first would ever apply")
        named[key] = section.where
        sections.append(section)
    return Rules(**settings, clients=tuple(sections), sources=sources,
                 where=_line(source, doc, "rules"))


def _line(source: str, where: yamlfile.LinedDict, key: str) -> str:
    line = where.lines.get(key)
    return f"{source}:{line}" if line else source


def _client_section(
    entry: yamlfile.LinedDict, number: int, defaults: Mapping[str, Any],
    default_sources: Mapping[str, str], source: str,
    fail: Callable[[yamlfile.LinedDict, str, str], RulesError],
) -> ClientSection:
    """One entry of ``clients``: exactly one identity key and ``rules``."""
    for key in entry:
        if key not in (*IDENTITIES, "rules"):
            raise fail(entry, key, f"unknown key {key!r} in clients entry {number}; a section "
                                   f"names one of {', '.join(IDENTITIES)} and has 'rules'")
    kinds = [key for key in entry if key in IDENTITIES]
    first = next(iter(entry))
    if not kinds:
        raise fail(entry, first, f"clients entry {number} names nobody: give one of "
                                 f"{', '.join(IDENTITIES)}")
    if len(kinds) > 1:
        raise fail(entry, kinds[1], f"clients entry {number} names both {kinds[0]} and "
                                    f"{kinds[1]}; a section names one client, give each its own")
    kind = kinds[0]
    name = entry[kind]
    if not isinstance(name, str) or not name:
        raise fail(entry, kind, f"{kind} must be a name (a non-empty string), not {name!r}")
    if "rules" not in entry:
        raise fail(entry, kind, f"clients entry {number} ({kind} {name}) has no 'rules'")
    own = entry["rules"]
    if not isinstance(own, dict):
        raise fail(entry, "rules", "a section's 'rules' must be a mapping of rule names to "
                                   "settings")
    settings, sources = _rule_settings(own, source, fail, f"clients entry {number}: ")
    # Key by key: a rule the section sets replaces the default's whole setting (a bind_mounts
    # allowlist with its resolve_symlinks, an images allowlist), never merges into it.
    where = _line(source, entry, kind)
    rules = Rules(**{**defaults, **settings}, sources={**default_sources, **sources},
                  where=where)
    return ClientSection(kind, name, rules, where)


def _rule_settings(
    rules: yamlfile.LinedDict, source: str,
    fail: Callable[[yamlfile.LinedDict, str, str], RulesError], prefix: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The Rules fields a ``rules`` mapping sets, and where each rule is."""
    settings: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in rules.items():
        if name not in _RULE_NAMES:
            raise fail(rules, name, f"{prefix}unknown rule {name!r}; rules are "
                                    f"{', '.join(_RULE_NAMES)}")
        sources[name] = f"{source}:{rules.lines.get(name)}"
        if name in _SWITCHES:
            if value not in ("forbid", "allow"):
                raise fail(rules, name, f"rule {name} is 'forbid' or 'allow', not {value!r}")
            settings[name] = value == "forbid"
            continue
        if name == "cap_add" and value == "forbid":
            settings[name] = frozenset()
            continue
        options = ("allow", "resolve_symlinks") if name == "bind_mounts" else ("allow",)
        if not isinstance(value, dict) or "allow" not in value:
            raise fail(rules, name, f"rule {name} needs {{allow: [...]}}"
                       + (" or 'forbid'" if name == "cap_add" else ""))
        for key in value:
            if key not in options:
                raise fail(value, key, f"unknown setting {key!r} of rule {name}")
        allow = value["allow"]
        if not isinstance(allow, list) or not all(isinstance(x, str) and x for x in allow):
            raise fail(value, "allow", f"{name}.allow must be a list of strings")
        if name == "cap_add":
            settings[name] = frozenset(normalize_capability(c) for c in allow)
        elif name == "endpoints":
            keys = []
            for key in allow:
                try:
                    keys.append(AllowedEndpoint(*parse_endpoint_key(key)))
                except ValueError as exc:
                    raise fail(value, "allow", f"endpoints.allow: {key!r}: {exc}") from None
            settings[name] = tuple(keys)
        elif name == "bind_mounts":
            for path in allow:
                if not path.startswith("/"):
                    raise fail(value, "allow", f"bind_mounts.allow: {path!r} is not absolute")
            settings[name] = tuple(clean_path(p) for p in allow)
            resolve = value.get("resolve_symlinks", True)
            if not isinstance(resolve, bool):
                raise fail(value, "resolve_symlinks", "resolve_symlinks must be true or false")
            settings["resolve_symlinks"] = resolve
        else:
            try:
                settings[name] = tuple(parse_image_reference(ref) for ref in allow)
            except ImageRefError as exc:
                raise fail(value, "allow", f"images.allow: {exc}") from None
    return settings, sources


def load_rules(path: str | os.PathLike[str]) -> Rules:
    """Rules from the file at ``path``; RulesError if it cannot be read or is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc}") from None
    return parse_rules(text, str(path))


# =================================================================================================
# Checks: pure functions from a request to the first rule it breaks (or None)
# =================================================================================================

_UNREADABLE = "body"


def _body(kind: Struct, body: str | None, what: str) -> dict[str, Any]:
    """The decoded body; _Unreadable if there is none to check. None means the proxy showed no
    JSON: no body, a Content-Type that is not JSON, or bytes that are not UTF-8."""
    if body is None:
        raise _Unreadable(
            f"{what} needs a JSON body the policy can read (Content-Type: application/json, "
            "UTF-8); a body it cannot see is refused"
        )
    try:
        decoded = go_decode(kind, body)
    except GoJSONError as exc:
        raise _Unreadable(f"{what}: the body is not valid for the daemon: {exc}") from None
    return decoded or {}


class _Unreadable(Exception):
    """A body the policy cannot judge."""


def _guard(check: Callable[..., Violation | None]) -> Callable[..., Violation | None]:
    def guarded(*args: Any, **kwargs: Any) -> Violation | None:
        try:
            return check(*args, **kwargs)
        except _Unreadable as exc:
            return Violation(_UNREADABLE, str(exc))

    guarded.__doc__ = check.__doc__
    guarded.__name__ = check.__name__
    return guarded


def _first(violations: Iterator[Violation]) -> Violation | None:
    return next(violations, None)


def _host_config_violations(rules: Rules, hc: Mapping[str, Any], at: str) -> Iterator[Violation]:
    if rules.privileged and hc.get("Privileged"):
        yield Violation("privileged", f"privileged containers are not allowed ({at}Privileged)")
    # dockerd takes only "host" as the host namespace ("HOST" fails later); refusing any case of
    # it, and "host:..." too, costs no real request anything.
    network = hc.get("NetworkMode") or ""
    if rules.host_network and network.split(":", 1)[0].lower() == "host":
        yield Violation("host_network", "the host's network namespace is not allowed "
                                        f"({at}NetworkMode {network!r})")
    pid = hc.get("PidMode") or ""
    if rules.host_pid and pid.split(":", 1)[0].lower() == "host":
        yield Violation("host_pid",
                        f"the host's PID namespace is not allowed ({at}PidMode {pid!r})")
    if rules.cap_add is not None:
        for cap in hc.get("CapAdd") or []:
            if normalize_capability(cap) not in rules.cap_add:
                yield Violation("cap_add",
                                f"adding capability {cap!r} is not allowed ({at}CapAdd)")
    if rules.bind_mounts is not None:
        yield from _bind_violations(rules, hc, at)


def _bind_violations(rules: Rules, hc: Mapping[str, Any], at: str) -> Iterator[Violation]:
    assert rules.bind_mounts is not None
    for bind in hc.get("Binds") or []:
        # "SOURCE:TARGET[:MODE]"; one part alone is a target (an anonymous volume), and a
        # source not starting with "/" is a volume name.
        source, colon, _ = bind.partition(":")
        if colon and source.startswith("/") and not allowed_path(
            source, rules.bind_mounts, rules.resolve_symlinks
        ):
            yield _path_violation(source, f"{at}Binds")
    for mount in hc.get("Mounts") or []:
        source = mount.get("Source") or ""
        # Any type: only "bind" mounts a host path, but an absolute Source never means anything
        # harmless (a volume named "/etc" is refused by the daemon anyway).
        if source.startswith("/") and not allowed_path(
            source, rules.bind_mounts, rules.resolve_symlinks
        ):
            yield _path_violation(source, f"{at}Mounts")
        driver = (mount.get("VolumeOptions") or {}).get("DriverConfig") or {}
        yield from _driver_opts_violations(
            rules, driver.get("Options") or {}, f"{at}Mounts VolumeOptions.DriverConfig.Options"
        )


def _driver_opts_violations(
    rules: Rules, opts: Mapping[str, str], at: str
) -> Iterator[Violation]:
    # The local driver mounts "device" (with o=bind, a bind of a host path; with a type such as
    # ext4, a host block device). Any driver's absolute device path is judged as a bind source.
    assert rules.bind_mounts is not None
    device = opts.get("device", "")
    kind = opts.get("type", "")
    if not device or kind in _DEVICE_NOT_A_PATH or (kind.startswith("nfs") and ":" in device):
        return
    if not device.startswith("/"):
        # mount(2) resolves a relative device against dockerd's working directory, which the
        # policy cannot know: "../../etc" is as much a host path as "/etc".
        yield Violation("bind_mounts", f"a volume on the relative host path {device!r} cannot "
                                       f"be checked against the allowed paths ({at})")
    elif not allowed_path(device, rules.bind_mounts, rules.resolve_symlinks):
        yield Violation("bind_mounts",
                        f"a volume on host path {device!r} is outside the allowed paths ({at})")


#: Local-driver mount types whose ``device`` names no file (``--opt device=tmpfs``).
_DEVICE_NOT_A_PATH = frozenset(("tmpfs", "ramfs"))


def _path_violation(source: str, at: str) -> Violation:
    return Violation("bind_mounts", f"bind mount of host path {source!r} is outside the allowed "
                                    f"paths ({at})")


def _image_violation(rules: Rules, image: str) -> Violation | None:
    if rules.images is None:
        return None
    if not image:
        return Violation("images", "the request names no image")
    try:
        ref = parse_image_reference(image)
    except ImageRefError as exc:
        return Violation("images", str(exc))
    if not image_allowed(ref, rules.images):
        return Violation("images", f"image {image!r} ({ref}) is not in the allowlist")
    return None


@_guard
def check_create(rules: Rules, body: str | None) -> Violation | None:
    """The first rule ``POST /containers/create`` with ``body`` breaks, or None."""
    decoded = _body(CREATE_BODY, body, "creating a container")
    return _image_violation(rules, decoded.get("Image") or "") or _host_config_violation(
        rules, decoded)


@_guard
def check_start(rules: Rules, target: str, body: str | None) -> Violation | None:
    """The first rule ``POST /containers/{id}/start`` breaks. Before API 1.24 dockerd still
    applies a HostConfig sent with start (20.10 does, with a warning in its log)."""
    if body is None:
        # The proxy shows every JSON body (bytes that are not UTF-8 as U+FFFD, as the daemon
        # reads them), and the daemon refuses a start body of any other type: nothing to judge.
        return None
    if len(body.encode("utf-8")) <= 7:
        return None  # dockerd ignores a body this short ("a non-nil json object is at least 7")
    return _host_config_violation(
        rules, _body(CREATE_BODY, body, "starting a container with a HostConfig"))


def _host_config_violation(rules: Rules, decoded: Mapping[str, Any]) -> Violation | None:
    for at, hc in host_configs(decoded):
        found = _first(_host_config_violations(rules, hc, at))
        if found:
            return found
    return None


@_guard
def check_exec(rules: Rules, body: str | None) -> Violation | None:
    """The first rule ``POST /containers/{id}/exec`` breaks (``docker exec --privileged``)."""
    if not rules.privileged:
        return None
    decoded = _body(EXEC_BODY, body, "creating an exec session")
    if decoded.get("Privileged"):
        return Violation("privileged", "privileged exec sessions are not allowed (Privileged)")
    return None


@_guard
def check_volume_create(rules: Rules, body: str | None) -> Violation | None:
    """The first rule ``POST /volumes/create`` breaks (a local volume that binds a host path)."""
    if rules.bind_mounts is None:
        return None
    decoded = _body(VOLUME_BODY, body, "creating a volume")
    return _first(_driver_opts_violations(rules, decoded.get("DriverOpts") or {}, "DriverOpts"))


def _query(target: str) -> dict[str, list[str]]:
    # Go's url.ParseQuery: "&"-separated, "+" is a space; a ";" makes dockerd answer 400.
    return parse_qs(target.partition("?")[2], keep_blank_values=True)


def check_build(rules: Rules, target: str) -> Violation | None:
    """The first rule ``POST /build`` breaks: ``networkmode=host``, or a tag (``t``) that would
    give an allowlisted image name to whatever the build makes."""
    query = _query(target)
    network = (query.get("networkmode") or [""])[0]
    if rules.host_network and network.split(":", 1)[0].lower() == "host":
        return Violation("host_network", f"building with networkmode {network!r} is not allowed")
    # dockerd reads every t= value.
    for tag in query.get("t", []):
        found = _naming_violation(rules, tag, "building")
        if found:
            return found
    return None


def check_image_naming(rules: Rules, kind: str, target: str) -> Violation | None:
    """The first rule a request that names local images breaks (``kind``: "tag", "commit",
    "import" or "load"). With an image allowlist, nothing but a pull may give an allowlisted
    name to an image, or ``docker tag evil busybox`` would let ``evil`` run as busybox."""
    if rules.images is None:
        return None
    if kind == "load":
        return Violation("images", "docker load names images from inside the archive, where the "
                                   "policy cannot see; loading images is not allowed")
    query = _query(target)
    repo = (query.get("repo") or [""])[0]
    if kind == "import" and not (query.get("fromSrc") or [""])[0]:
        return None  # a pull (fromImage): the registry decides what the name holds
    if not repo:
        return None
    # dockerd parses repo as a reference, drops any tag or digest it carries and applies the tag
    # parameter to what is left: the repository is repo's, whatever either says of tags.
    return _naming_violation(rules, repo, kind)


def _naming_violation(rules: Rules, name: str, doing: str) -> Violation | None:
    if rules.images is None:
        return None
    try:
        ref = parse_image_reference(name, id_like=True)
    except ImageRefError as exc:
        # Fail closed: a name this reader cannot parse must not be one the daemon can.
        return Violation("images", f"{doing}: cannot read the image name {name!r}: {exc}")
    # Any tag of an allowlisted repository counts: a tag-specific entry is still the repository.
    if any(entry.repository == ref.repository for entry in rules.images):
        return Violation("images", f"{doing} may not name an image {name!r}: "
                                   f"{ref.repository} is on the allowlist")
    return None


@_guard
def check_container_update(rules: Rules, body: str | None) -> Violation | None:
    """The first rule ``POST /containers/{id}/update`` breaks. dockerd reads only resources and
    the restart policy from it (``docker update``); privileges, namespaces, capabilities and
    mounts in it are ignored, and refused all the same rather than trusted to stay ignored."""
    return _host_config_violation(rules, _body(UPDATE_BODY, body, "updating a container"))


@_guard
def check_service(rules: Rules, body: str | None) -> Violation | None:
    """The first rule ``POST /services/create`` or ``POST /services/{id}/update`` breaks.

    A service's tasks are containers the daemon creates itself, with no request to any proxy,
    so the spec is judged as a create would be: its image, its mounts, the capabilities it adds
    and the networks it joins; a task that installs a plugin falls to the ``plugins`` rule.
    """
    spec = _body(SERVICE_SPEC, body, "creating or updating a service")
    task = spec.get("TaskTemplate") or {}
    runtime = task.get("Runtime") or ""
    is_plugin = runtime.lower() == "plugin"
    if rules.plugins and (is_plugin or task.get("PluginSpec") is not None):
        return Violation("plugins", "a service whose tasks install a plugin on every node they "
                                    "run on is not allowed (TaskTemplate.PluginSpec, Runtime)")
    container = task.get("ContainerSpec") or {}
    at = "TaskTemplate.ContainerSpec."
    if not (is_plugin and not container):
        found = _image_violation(rules, container.get("Image") or "")
        if found:
            return found
    if rules.cap_add is not None:
        for cap in container.get("CapabilityAdd") or []:
            if normalize_capability(cap) not in rules.cap_add:
                return Violation("cap_add",
                                 f"adding capability {cap!r} is not allowed ({at}CapabilityAdd)")
    if rules.bind_mounts is not None:
        found = _first(_bind_violations(rules, {"Mounts": container.get("Mounts")}, at))
        if found:
            return found
    if rules.host_network:
        for where, networks in (("TaskTemplate.Networks", task.get("Networks")),
                                ("Networks", spec.get("Networks"))):
            for network in networks or []:
                target = (network or {}).get("Target") or ""
                # The "host" network by name, in any case: the manager looks names up in the
                # swarm's networks and then the node's, and refusing "HOST" costs nothing.
                if target.lower() == "host":
                    return Violation("host_network", "the host's network namespace is not "
                                                     f"allowed ({where} Target {target!r})")
    return None


def service_networks(body: str | None) -> list[tuple[str, str]]:
    """The network Targets a service spec names, each with where it was, other than ``host``
    itself (which ``check_service`` judges): the docker CLI resolves ``--network host`` to the
    network's ID before it sends the spec, and the manager takes an ID or an ID prefix as well
    as a name, so only the daemon can say which network each one is. Empty for a body
    ``check_service`` refuses as unreadable."""
    try:
        spec = _body(SERVICE_SPEC, body, "a service")
    except _Unreadable:
        return []
    task = spec.get("TaskTemplate") or {}
    found = []
    for where, networks in (("TaskTemplate.Networks", task.get("Networks")),
                            ("Networks", spec.get("Networks"))):
        for network in networks or []:
            target = (network or {}).get("Target") or ""
            if target.lower() != "host":
                found.append((where, target))
    return found


class NetworkLookup(Protocol):
    """What the policy asks of a Docker Engine: ``powerstrip.kit.engine_api.EngineClient``."""

    def request(self, method: str, path: str) -> Any:
        """A Deferred firing with the parsed answer, or failing with an EngineError."""
        ...


async def host_network_violation(
    rules: Rules, engine: NetworkLookup | None, where: str, target: str
) -> Violation | None:
    """Whether the network ``target`` of a service spec is the host's, asked of ``engine``
    (``GET /networks/{target}``, which resolves a name, an ID or an ID prefix as the manager
    does). Without an engine, or without an answer, it is refused: the policy never guesses in
    the request's favour."""
    if not rules.host_network:
        return None
    if engine is None:
        return Violation("host_network", f"cannot tell whether network {target!r} ({where}) is "
                                         "the host's: start the policy with --docker ADDR to "
                                         "let it look networks up")
    from powerstrip.kit.engine_api import EngineError

    try:
        info = await engine.request("GET", f"/networks/{target}")
    except EngineError as exc:
        return Violation("host_network", f"cannot look network {target!r} ({where}) up: "
                                         f"{exc.message}")
    if not isinstance(info, dict) or info.get("Driver") == "host" or info.get("Name") == "host":
        return Violation("host_network", "the host's network namespace is not allowed "
                                         f"({where} Target {target!r} is the host network)")
    return None


def check_swarm(rules: Rules, kind: str) -> Violation | None:
    """The first rule ``POST /swarm/init`` or ``POST /swarm/join`` breaks (``kind``: "init" or
    "join"). Joining hands this node to a remote manager, which schedules containers here
    without a request to this daemon; initialising lets other nodes join as managers with the
    tokens ``GET /swarm`` shows, and do the same."""
    if not rules.swarm:
        return None
    if kind == "join":
        why = "joining a swarm hands this node to its managers, which start containers here " \
              "that no request to this daemon shows"
    else:
        why = "initialising a swarm lets other nodes join as managers and start containers " \
              "here that no request to this daemon shows"
    return Violation("swarm", f"{why}; not allowed")


def check_plugin(rules: Rules, kind: str) -> Violation | None:
    """The first rule a request that installs, configures or enables a managed plugin breaks
    (``kind``: "privileges", "pull", "create", "upgrade", "set" or "enable"). A plugin runs as
    a container the daemon starts with the privileges the plugin's own config asks for (host
    network, mounts of host paths, devices, capabilities), and ``set`` changes its mount
    sources and devices: no container rule would see any of it."""
    if not rules.plugins:
        return None
    return Violation("plugins", f"plugins run with host privileges the policy cannot judge; "
                                f"plugin {kind} is not allowed")


@lru_cache(maxsize=16)
def _endpoint_matcher(allowed: tuple[AllowedEndpoint, ...]) -> Matcher[AllowedEndpoint]:
    return Matcher(allowed)


def check_endpoint(rules: Rules, method: str, target: str) -> Violation | None:
    """Whether ``method target`` is refused by the ``endpoints`` allowlist: every endpoint not
    on it is, matched on the path dockerd routes (any version, any percent-encoding) exactly
    as the proxy matches its adapters file."""
    if rules.endpoints is None:
        return None
    try:
        if _endpoint_matcher(rules.endpoints).match(method, target):
            return None
        path = canonical_path(target)
    except SpellingError as exc:
        return Violation("endpoints", f"cannot read the request target {target!r}: {exc}")
    if path is None:
        # dockerd only redirects such a target (301) and does nothing else.
        return None
    return Violation("endpoints", f"{method} {path} is not on the allowlist of endpoints")


# =================================================================================================
# The adapter
# =================================================================================================


@dataclass(frozen=True)
class Applied:
    """The rules one request is judged by: whose they are and where they come from."""

    rules: Rules
    client: Client | None
    section: ClientSection | None

    def describe(self) -> str:
        """What a refusal adds: ``rules for unix user ci (uid 999): the clients section for
        user ci (policy.yml:44)``, or ``...: the default rules (policy.yml:3)``."""
        who = ("an unknown client (a protocol 1 call)" if self.client is None
               else self.client.describe())
        if self.section is not None:
            return f"rules for {who}: {self.section.describe()}"
        return f"rules for {who}: the default rules{_at(self.rules.where)}"

    def enforce(self, found: Violation | None) -> None:
        """Refuse the request (403) if ``found``, naming the rule, the client and the rules."""
        if found is not None:
            raise Refuse(403, f"{found.message()}; {self.describe()}")


def applied_rules(rules: Rules, client: Client | None) -> Applied:
    """The rules for ``client``: those of the first ``clients`` section naming it, else the
    default rules (also for a client nobody can name, and for None, a protocol 1 call)."""
    section = rules.section_for(client)
    return Applied(rules if section is None else section.rules, client, section)


def make_adapter(
    rules: Rules, name: str = "policy", engine: NetworkLookup | None = None
) -> Adapter:
    """An Adapter enforcing ``rules`` on the endpoints listed in docs/policy.md, each request by
    the rules for its client (``applied_rules``); ``engine`` is the daemon, asked directly which
    network a service's network ID is. It speaks protocol 2, to learn the client; called with
    version 1 (mapped without ``protocol: 2``) it judges every request by the default rules."""
    app = Adapter(name, protocol=2)

    def judging(req: Request) -> Applied:
        return applied_rules(rules, req.client)

    # Registered first, so it runs first: the endpoints allowlist needs the adapter hooked on
    # every request ("* *"), and whatever it refuses needs no other look.
    @app.pre("* *")
    def endpoint(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_endpoint(applied.rules, req.method, req.target))

    @app.pre("POST /*/containers/create")
    def create(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_create(applied.rules, req.body))

    @app.pre("POST /*/containers/*/start")
    def start(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_start(applied.rules, req.target, req.body))

    @app.pre("POST /*/containers/*/exec")
    def exec_create(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_exec(applied.rules, req.body))

    @app.pre("POST /*/volumes/create")
    def volume_create(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_volume_create(applied.rules, req.body))

    @app.pre("POST /*/build")
    def build(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_build(applied.rules, req.target))

    @app.pre("POST /*/images/*/tag")
    def tag(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_image_naming(applied.rules, "tag", req.target))

    @app.pre("POST /*/commit")
    def commit(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_image_naming(applied.rules, "commit", req.target))

    @app.pre("POST /*/images/create")
    def image_import(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_image_naming(applied.rules, "import", req.target))

    @app.pre("POST /*/images/load")
    def load(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_image_naming(applied.rules, "load", req.target))

    @app.pre("POST /*/containers/*/update")
    def container_update(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_container_update(applied.rules, req.body))

    async def service(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check_service(applied.rules, req.body))
        for where, target in service_networks(req.body):
            applied.enforce(await host_network_violation(applied.rules, engine, where, target))

    app.pre("POST /*/services/create")(service)
    app.pre("POST /*/services/*/update")(service)

    for kind in ("init", "join"):
        app.pre(f"POST /*/swarm/{kind}")(_refusing(judging, check_swarm, kind))
    for key, kind in _PLUGIN_ENDPOINTS:
        app.pre(key)(_refusing(judging, check_plugin, kind))
    return app


#: The requests that install, configure or enable a managed plugin (``docker plugin install``
#: asks for the privileges first), and what each is called in refusals.
_PLUGIN_ENDPOINTS = (
    ("GET /*/plugins/privileges", "privileges"), ("POST /*/plugins/pull", "pull"),
    ("POST /*/plugins/create", "create"), ("POST /*/plugins/*/upgrade", "upgrade"),
    ("POST /*/plugins/*/set", "set"), ("POST /*/plugins/*/enable", "enable"),
)


def _refusing(
    judging: Callable[[Request], Applied],
    check: Callable[[Rules, str], Violation | None], kind: str,
) -> Callable[[Request], None]:
    def hook(req: Request) -> None:
        applied = judging(req)
        applied.enforce(check(applied.rules, kind))

    hook.__qualname__ = hook.__name__ = f"{check.__name__.removeprefix('check_')}_{kind}"
    return hook


#: The example rules, beside this file in a checkout and where installed (package data).
EXAMPLE_RULES = Path(__file__).with_name("policy.yml")


def main(argv: list[str] | None = None) -> None:
    """``policy.py --listen HOST:PORT|--unix PATH [--rules FILE] [--docker ADDR]``: load the
    rules, then serve."""
    app = Adapter("policy", protocol=2)
    parser = app.argument_parser()
    parser.add_argument("--rules", default=str(EXAMPLE_RULES), metavar="FILE",
                        help="the YAML rules file (default: the example rules, %(default)s)")
    parser.add_argument("--docker", metavar="ADDR", default=None,
                        help="the Docker Engine, reached directly, not through Powerstrip, to "
                             "look up the networks a service names (unix:///path, "
                             "tcp://HOST:PORT); without it, a service naming a network by ID "
                             "is refused while host_network is forbidden")
    args = parser.parse_args(argv)
    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        print(f"policy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    engine = None
    if args.docker:
        from powerstrip.kit.engine_api import EngineClient
        from powerstrip.proxy.addresses import AddressError, parse_address

        try:
            parse_address(args.docker)
        except AddressError as exc:
            parser.error(str(exc))
        engine = EngineClient(args.docker, timeout=10.0)
    make_adapter(rules, engine=engine).serve(args)


if __name__ == "__main__":
    main()
