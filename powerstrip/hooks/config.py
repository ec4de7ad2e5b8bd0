"""The adapters file: the 2015 Powerstrip ``adapters.yml`` format, read and checked.

An original file loads verbatim::

    version: 1
    endpoints:
      "POST /*/containers/create":
        pre: [flocker, weave]
        post: [weave]
    adapters:
      flocker: http://flocker/flocker-adapter
      weave: http://weave/extension

On top of that an adapter may be a mapping (``url``, ``timeout``, ``on_error``, ``protocol``,
``credentials``) or a Docker AuthZ plugin (``plugin: authz`` with ``name`` or ``socket``), its
URL may name
a unix socket, ``max_body`` bounds the bodies buffered for hooks, and ``clients`` allows only
some clients in (``ClientPolicy``). Every problem is reported as
``PATH:LINE: message`` and all of them are reported at once, so one run of ``powerstrip check``
shows everything to fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from powerstrip.core.identity import Client
from powerstrip.hooks.matching import parse_endpoint_key
from powerstrip.hooks.wire import PROTOCOL_VERSIONS
from powerstrip.hooks.yamlfile import Document, YamlError, describe, is_null, is_str

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BODY = 4 * 1024 * 1024
ON_ERROR_CHOICES = ("fail", "skip")

_TOP_KEYS = ("version", "endpoints", "adapters", "max_body", "clients")
_CLIENTS_KEYS = ("allow",)
#: What an allowlist entry may name: the field of ``Client`` it compares and the kind of value.
_RULE_KEYS = ("user", "group", "uid", "gid", "common_name", "san")
_ENDPOINT_KEYS = ("pre", "post")
_ADAPTER_KEYS = ("url", "timeout", "on_error", "protocol", "credentials", "plugin", "name",
                 "socket")
#: The kinds of Docker plugin an adapter mapping may name (``plugin: authz``).
PLUGIN_KINDS = ("authz",)
#: Docker retries a plugin call it cannot connect for up to 30 s; a plugin adapter waits as long.
PLUGIN_TIMEOUT = 30.0
#: Where a Docker AuthZ plugin answers the requests and the responses.
AUTHZ_REQUEST_PATH = "/AuthZPlugin.AuthZReq"
AUTHZ_RESPONSE_PATH = "/AuthZPlugin.AuthZRes"
_URL_FORMS = "http://HOST/PATH, https://HOST/PATH, unix:///SOCKET:/PATH or http+unix://%2FSOCKET/PATH"

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


class ConfigError(YamlError):
    """A configuration that cannot be used; ``errors`` holds one ``PATH:LINE: message`` each."""


@dataclass(frozen=True)
class AdapterTarget:
    """Where hook calls for an adapter are POSTed.

    ``kind`` is "http", "https" or "unix". For http and https ``url`` is the URL as written; for
    a unix socket it is ``http://localhost`` followed by ``http_path``, and ``socket_path`` is the
    socket to connect to. ``http_path`` is the path, with its query string if any, to POST to.
    """

    kind: str
    url: str
    socket_path: str | None
    http_path: str


@dataclass(frozen=True)
class AdapterSpec:
    """A named adapter as the adapters file declares it: where to reach it, how long to wait,
    and what a failed call means. (The adapter itself is a service, often built with the SDK's
    ``Adapter``; ``hooks.client.AdapterClient`` calls it.)

    ``on_error`` is "fail" (the client gets an error) or "skip" (the hook is passed over).
    ``protocol`` is the version of the wire format it speaks (``hooks.wire``: 2 adds the client
    and the headers), ``credentials`` whether it is shown registry credentials (version 2).
    ``line`` is where the adapter is defined, for messages that point back at the file.
    """

    name: str
    url: str
    target: AdapterTarget
    timeout: float = DEFAULT_TIMEOUT
    on_error: str = "fail"
    line: int = 0
    protocol: int = 1
    credentials: bool = False
    #: ``"authz"`` for a Docker AuthZ plugin called as an adapter (``plugin: authz``); its
    #: ``target`` then has kind ``"plugin"`` (found by name when first called) or ``"unix"``.
    plugin: str | None = None
    #: The plugin's name, for discovery (None when the mapping gives its socket).
    plugin_name: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One ``"METHOD PATH-GLOB"`` entry and the adapters it runs before and after the daemon."""

    key: str
    method: str
    pattern: str
    pre: tuple[str, ...]
    post: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class ClientRule:
    """One entry of the ``clients`` allowlist: a client matches when it has every value given.

    ``user`` and ``group`` are unix user and group names (the group primary or supplementary),
    ``uid`` and ``gid`` their numbers, ``common_name`` and ``san`` a verified TLS client
    certificate's subject CN and one of its subject alternative names.
    """

    user: str | None = None
    group: str | None = None
    uid: int | None = None
    gid: int | None = None
    common_name: str | None = None
    san: str | None = None
    line: int = 0

    def matches(self, client: Client) -> bool:
        """Whether ``client`` has every value this entry names."""
        certificate = client.certificate
        return (
            (self.user is None or client.user == self.user)
            and (self.group is None or self.group in client.groups)
            and (self.uid is None or client.uid == self.uid)
            and (self.gid is None or client.gid == self.gid)
            and (self.common_name is None
                 or (certificate is not None and certificate.common_name == self.common_name))
            and (self.san is None or (certificate is not None and self.san in certificate.sans))
        )


@dataclass(frozen=True)
class ClientPolicy:
    """The ``clients`` section: only clients matching one ``allow`` entry are let in."""

    allow: tuple[ClientRule, ...]
    line: int = 0

    def refusal(self, client: Client) -> str | None:
        """None if ``client`` may use the proxy, else the message it is refused with."""
        for rule in self.allow:
            if rule.matches(client):
                return None
        return (f"Powerstrip does not let this client in: it was taken to be "
                f"{client.describe()}, whom its 'clients' allowlist does not name")


@dataclass(frozen=True)
class Config:
    """A checked configuration.

    ``endpoints`` keep file order, because the hook lists of endpoints matching one request
    concatenate in it. ``source`` is the file it came from, None for the built-in empty
    configuration.
    """

    endpoints: tuple[Endpoint, ...]
    adapters: dict[str, AdapterSpec]
    source: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    #: Who may use the proxy; None (no ``clients`` section): everyone who reaches a listener.
    clients: ClientPolicy | None = None


EMPTY = Config(endpoints=(), adapters={}, source=None)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the configuration file at ``path``; raise ConfigError on any problem."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: cannot read: not UTF-8 text (bad byte at offset {exc.start})"]
        ) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Check the configuration ``text``; ``source`` names it in messages.

    Raises ConfigError listing every problem found, each as ``SOURCE:LINE: message``.
    """
    try:
        document = Document(text, source)
    except YamlError as exc:
        raise ConfigError(exc.errors) from None
    config = _Checker(source, document).config(document.root)
    errors = document.errors()
    if errors or config is None:
        raise ConfigError(errors)
    return config


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    """Walks the node tree of one file, building the Config and reporting every fault."""

    def __init__(self, source: str, document: Document) -> None:
        self.source = source
        self.document = document
        self.report = document.report

    def unknown(self, key: Node, name: str, known: tuple[str, ...], where: str) -> None:
        self.report(
            key,
            f"unknown key {name!r} {where} (expected {', '.join(known)})"
            + _did_you_mean(name, known),
        )

    def config(self, root: Node | None) -> Config | None:
        if root is None or is_null(root):
            self.report(1, "the file is empty: it needs 'endpoints' and 'adapters' "
                           "(write {} for none)")
            return None
        if not isinstance(root, MappingNode):
            self.report(root, "the top level must be a mapping with 'endpoints' and 'adapters', "
                              f"got {describe(root)}")
            return None
        sections: dict[str, list[tuple[Node, Node]]] = {}
        for name, key, value in self.document.entries(root):
            if name in _TOP_KEYS:
                sections.setdefault(name, []).append((key, value))
            else:
                self.unknown(key, name, _TOP_KEYS, "at the top level")
        for required in ("endpoints", "adapters"):
            if required not in sections:
                self.report(1, f"missing '{required}' (write '{required}: {{}}' for none)")

        adapters: dict[str, AdapterSpec] = {}
        defined: set[str] | None = set() if "adapters" in sections else None
        for key, value in sections.get("adapters", []):
            names = self.adapters(key, value, adapters)
            if names is None:
                defined = None
            elif defined is not None:
                defined |= names

        endpoints: list[Endpoint] = []
        uses: list[tuple[Node, str, str]] = []
        for key, value in sections.get("endpoints", []):
            endpoints.extend(self.endpoints(key, value, uses))
        # Without a readable 'adapters' section every name would look undefined: noise.
        if defined is not None:
            for node, name, where in uses:
                if name not in defined:
                    self.report(
                        node,
                        f"adapter {name!r} ({where}) is not defined under 'adapters'"
                        + _did_you_mean(name, defined),
                    )

        max_body = DEFAULT_MAX_BODY
        for key, value in sections.get("max_body", []):
            max_body = self.max_body(key, value)
        for key, value in sections.get("version", []):
            self.version(key, value)
        clients: ClientPolicy | None = None
        for key, value in sections.get("clients", []):
            clients = self.clients(key, value)
        return Config(tuple(endpoints), adapters, self.source, max_body, clients)

    def clients(self, key: Node, value: Node) -> ClientPolicy | None:
        """Check the 'clients' section; a section with faults allows nobody (it is reported)."""
        line = key.start_mark.line + 1
        nobody = ClientPolicy((), line)
        if is_null(value):
            self.report(key, "'clients' is empty (null); give it an 'allow' list, "
                             "or leave it out to let in every client that reaches a listener")
            return nobody
        if not isinstance(value, MappingNode):
            self.report(value, f"'clients' must be a mapping with 'allow', got {describe(value)}")
            return nobody
        rules: list[ClientRule] = []
        seen_allow = False
        for field, field_key, items in self.document.entries(value):
            if field not in _CLIENTS_KEYS:
                self.unknown(field_key, field, _CLIENTS_KEYS, "in 'clients'")
                continue
            seen_allow = True
            if not isinstance(items, SequenceNode):
                self.report(items if not is_null(items) else field_key,
                            "'allow' of 'clients' must be a list of entries such as "
                            f"{{user: NAME}} or {{common_name: NAME}}, got {describe(items)}")
                continue
            for item in items.value:
                rule = self.client_rule(item)
                if rule is not None:
                    rules.append(rule)
        if not seen_allow:
            self.report(key, "'clients' has no 'allow' list")
        return ClientPolicy(tuple(rules), line)

    def client_rule(self, item: Node) -> ClientRule | None:
        forms = ", ".join(_RULE_KEYS)
        if not isinstance(item, MappingNode):
            self.report(item, f"each entry of 'allow' in 'clients' must be a mapping naming "
                              f"one or more of {forms}, got {describe(item)}")
            return None
        found: dict[str, object] = {}
        ok = True
        for field, field_key, value in self.document.entries(item):
            if field not in _RULE_KEYS:
                self.unknown(field_key, field, _RULE_KEYS, "in an entry of 'allow' in 'clients'")
                ok = False
                continue
            scalar = self.document.scalar(value)
            if field in ("uid", "gid"):
                if type(scalar) is not int or scalar < 0:
                    self.report(value if not is_null(value) else field_key,
                                f"{field!r} in 'clients' must be a number 0 or more, "
                                f"got {describe(value)}")
                    ok = False
                    continue
            elif not (is_str(value) and value.value):
                self.report(value if not is_null(value) else field_key,
                            f"{field!r} in 'clients' must be a name (a string), "
                            f"got {describe(value)}")
                ok = False
                continue
            found[field] = scalar
        line = item.start_mark.line + 1
        if ok and not found:
            self.report(item, f"an entry of 'allow' in 'clients' names nothing; give one or "
                              f"more of {forms}")
            return None
        return ClientRule(**found, line=line) if ok else None

    def version(self, key: Node, value: Node) -> None:
        found = self.document.scalar(value)
        if is_null(value):
            self.report(key, "'version' is empty (null); write 'version: 1' or leave it out")
        elif type(found) is not int or found != 1:
            self.report(value, f"'version' must be 1, got {describe(value)}")

    def max_body(self, key: Node, value: Node) -> int:
        found = self.document.scalar(value)
        size: int | None = None
        if is_null(value):
            self.report(key, "'max_body' is empty (null); give a size such as 4MiB, "
                             "or leave it out for the default")
            return DEFAULT_MAX_BODY
        if type(found) is int:
            size = found
        elif isinstance(found, str):
            size = _parse_size(found)
        if size is None:
            self.report(value, "'max_body' must be a number of bytes or a size such as 4MiB, "
                               f"512KiB or 1MB, got {describe(value)}")
        elif size <= 0:
            self.report(value, f"'max_body' must be more than 0 bytes, got {value.value}")
        else:
            return size
        return DEFAULT_MAX_BODY

    def adapters(self, key: Node, value: Node, out: dict[str, AdapterSpec]) -> set[str] | None:
        """Check the 'adapters' section into ``out``; the names it defines, None if unreadable."""
        if is_null(value):
            self.report(key, "'adapters' is empty (null); write 'adapters: {}' for none")
            return None
        if not isinstance(value, MappingNode):
            self.report(value, "'adapters' must be a mapping of names to URLs, "
                               f"got {describe(value)}")
            return None
        names: set[str] = set()
        for name, name_node, spec in self.document.entries(value):
            names.add(name)
            adapter = self.adapter(name, name_node, spec)
            if adapter is not None:
                out[name] = adapter
        return names

    def adapter(self, name: str, key: Node, spec: Node) -> AdapterSpec | None:
        line = key.start_mark.line + 1
        if not name:
            self.report(key, "adapter names must not be empty")
        if is_null(spec):
            self.report(key, f"adapter {name!r} has no URL")
            return None
        if is_str(spec):
            target = self.target(name, spec)
            if target is None:
                return None
            return AdapterSpec(name, spec.value, target, line=line)
        if not isinstance(spec, MappingNode):
            self.report(spec, f"adapter {name!r} must be a URL or a mapping with 'url', "
                              f"got {describe(spec)}")
            return None

        url: str | None = None
        target: AdapterTarget | None = None
        timeout: float | None = None
        on_error = "fail"
        protocol = 1
        credentials: ScalarNode | None = None
        ok = True
        seen_url = False
        plugin: dict[str, tuple[Node, ScalarNode]] = {}
        for field, field_key, value in self.document.entries(spec):
            if field in ("plugin", "name", "socket") and not is_null(value):
                if is_str(value):
                    plugin[field] = (field_key, value)
                else:
                    self.report(value, f"{field!r} of adapter {name!r} must be a string, "
                                       f"got {describe(value)}")
                    ok = False
                continue
            if field not in _ADAPTER_KEYS:
                self.unknown(field_key, field, _ADAPTER_KEYS, f"in adapter {name!r}")
                ok = False
            elif is_null(value):
                self.report(field_key, f"{field!r} of adapter {name!r} is empty (null)")
                ok = False
                seen_url = seen_url or field == "url"
            elif field == "url":
                seen_url = True
                if not is_str(value):
                    self.report(value, f"'url' of adapter {name!r} must be a string, "
                                       f"got {describe(value)}")
                    ok = False
                else:
                    url = value.value
                    target = self.target(name, value)
                    ok = ok and target is not None
            elif field == "timeout":
                found = self.document.scalar(value)
                if type(found) not in (int, float):
                    self.report(value, f"'timeout' of adapter {name!r} must be a number of "
                                       f"seconds, got {describe(value)}")
                    ok = False
                elif not (math.isfinite(found) and found > 0):
                    self.report(value, f"'timeout' of adapter {name!r} must be a finite number "
                                       f"of seconds above 0, got {value.value}")
                    ok = False
                else:
                    timeout = float(found)
            elif field == "protocol":
                found = self.document.scalar(value)
                if type(found) is not int or found not in PROTOCOL_VERSIONS:
                    self.report(value, f"'protocol' of adapter {name!r} must be 1 or 2, "
                                       f"got {describe(value)}")
                    ok = False
                else:
                    protocol = found
            elif field == "credentials":
                if type(self.document.scalar(value)) is not bool:
                    self.report(value, f"'credentials' of adapter {name!r} must be true or "
                                       f"false, got {describe(value)}")
                    ok = False
                else:
                    credentials = value
            else:
                if not (is_str(value) and value.value in ON_ERROR_CHOICES):
                    self.report(value, f"'on_error' of adapter {name!r} must be 'fail' or "
                                       f"'skip', got {describe(value)}")
                    ok = False
                else:
                    on_error = value.value
        if plugin:
            return self.plugin_adapter(name, key, line, plugin, seen_url, timeout, on_error,
                                       protocol != 1 or credentials is not None, ok)
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        if not seen_url:
            self.report(key, f"adapter {name!r} has no 'url'")
            return None
        shown = credentials is not None and self.document.scalar(credentials) is True
        if shown and protocol < 2:
            # Version 1 shows no headers at all: the setting would promise what never happens.
            self.report(credentials, f"'credentials' of adapter {name!r} needs 'protocol: 2' "
                                     f"(version 1 shows no headers)")
            ok = False
        if not ok or url is None or target is None:
            return None
        return AdapterSpec(name, url, target, timeout=timeout, on_error=on_error, line=line,
                           protocol=protocol, credentials=shown)

    def plugin_adapter(
        self, name: str, key: Node, line: int, fields: dict[str, tuple[Node, ScalarNode]],
        seen_url: bool, timeout: float | None, on_error: str, versioned: bool, ok: bool,
    ) -> AdapterSpec | None:
        """An adapter that is a Docker plugin: ``plugin: authz`` and its ``name`` (found as
        dockerd finds it) or its ``socket``."""
        if "plugin" not in fields:
            field = "name" if "name" in fields else "socket"
            self.report(fields[field][0], f"adapter {name!r} gives a plugin {field} but no "
                                          f"'plugin: authz'")
            return None
        kind_node = fields["plugin"][1]
        if kind_node.value not in PLUGIN_KINDS:
            self.report(kind_node, f"'plugin' of adapter {name!r} must be one of "
                                   f"{', '.join(PLUGIN_KINDS)}, got {kind_node.value!r} (volume "
                                   "and IPAM plugins are called by dockerd, not by hooks)")
            return None
        if seen_url:
            self.report(key, f"adapter {name!r} is a plugin: give its 'name' or 'socket', "
                             "not a 'url'")
            return None
        if versioned:
            self.report(key, f"adapter {name!r} is a plugin: it speaks Docker's AuthZ "
                             "protocol, so 'protocol' and 'credentials' do not apply")
            return None
        if ("name" in fields) == ("socket" in fields):
            self.report(key, f"adapter {name!r} is a plugin: give its 'name' (found in "
                             "/run/docker/plugins, /etc/docker/plugins, /usr/lib/docker/plugins) "
                             "or its 'socket' (unix:///PATH), one of them")
            return None
        if not ok:
            return None
        timeout = PLUGIN_TIMEOUT if timeout is None else timeout
        if "name" in fields:
            plugin_name = fields["name"][1].value
            if not plugin_name or "/" in plugin_name:
                self.report(fields["name"][1], f"adapter {name!r}: {plugin_name!r} is not a "
                                               "plugin name")
                return None
            target = AdapterTarget("plugin", f"plugin:{plugin_name}", None, AUTHZ_REQUEST_PATH)
            return AdapterSpec(name, f"plugin {plugin_name}", target, timeout=timeout,
                               on_error=on_error, line=line, plugin="authz",
                               plugin_name=plugin_name)
        node = fields["socket"][1]
        path = node.value.removeprefix("unix://")
        if not path.startswith("/"):
            self.report(node, f"'socket' of adapter {name!r} must be unix:///PATH, an absolute "
                              f"path, got {node.value!r}")
            return None
        target = AdapterTarget("unix", "http://localhost" + AUTHZ_REQUEST_PATH, path,
                               AUTHZ_REQUEST_PATH)
        return AdapterSpec(name, f"unix://{path}", target, timeout=timeout, on_error=on_error,
                           line=line, plugin="authz")

    def target(self, name: str, node: ScalarNode) -> AdapterTarget | None:
        try:
            return _parse_target(node.value)
        except ValueError as exc:
            self.report(node, f"adapter {name!r}: {exc}")
            return None

    def endpoints(
        self, key: Node, value: Node, uses: list[tuple[Node, str, str]]
    ) -> list[Endpoint]:
        """Check the 'endpoints' section; adapter names used are appended to ``uses``."""
        if is_null(value):
            self.report(key, "'endpoints' is empty (null); write 'endpoints: {}' for none")
            return []
        if not isinstance(value, MappingNode):
            self.report(value, "'endpoints' must be a mapping of \"METHOD PATH-GLOB\" keys, "
                               f"got {describe(value)}")
            return []
        out: list[Endpoint] = []
        for text, key_node, spec in self.document.entries(value):
            endpoint = self.endpoint(text, key_node, spec, uses)
            if endpoint is not None:
                out.append(endpoint)
        return out

    def endpoint(
        self, text: str, key: Node, spec: Node, uses: list[tuple[Node, str, str]]
    ) -> Endpoint | None:
        try:
            method, pattern = parse_endpoint_key(text)
        except ValueError as exc:
            self.report(key, f"endpoint {text!r}: {exc}")
            method, pattern = "", ""
        if is_null(spec):
            self.report(key, f"endpoint {text!r} is empty (null); give it 'pre' and/or 'post' "
                             "lists, or write {}")
            return None
        if not isinstance(spec, MappingNode):
            self.report(spec, f"endpoint {text!r} must be a mapping with 'pre' and/or 'post', "
                              f"got {describe(spec)}")
            return None
        hooks: dict[str, tuple[str, ...]] = {"pre": (), "post": ()}
        for field, field_key, value in self.document.entries(spec):
            if field not in _ENDPOINT_KEYS:
                self.unknown(field_key, field, _ENDPOINT_KEYS, f"in endpoint {text!r}")
                continue
            where = f"{field!r} of endpoint {text!r}"
            if is_null(value):
                self.report(field_key, f"{where} is empty (null); list adapter names, "
                                       "or write [] for none")
            elif not isinstance(value, SequenceNode):
                hint = f"; write [{value.value}]" if is_str(value) else ""
                self.report(value, f"{where} must be a list of adapter names, "
                                   f"got {describe(value)}{hint}")
            else:
                names: list[str] = []
                for item in value.value:
                    if is_str(item):
                        names.append(item.value)
                        uses.append((item, item.value, f"in {where}"))
                    else:
                        self.report(item, f"{where}: list items must be adapter names "
                                          f"(strings), got {describe(item)}")
                hooks[field] = tuple(names)
        line = key.start_mark.line + 1
        return Endpoint(text, method, pattern, hooks["pre"], hooks["post"], line)


def _parse_target(url: str) -> AdapterTarget:
    """Where an adapter URL points; raise ValueError saying what is wrong."""
    if not url or any(ch.isspace() for ch in url):
        raise ValueError(f"URL {url!r} is empty or contains whitespace")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"URL {url!r} has no scheme; write {_URL_FORMS}")
    if scheme == "unix":
        return _unix_target(url, rest)
    if scheme not in ("http", "https", "http+unix"):
        raise ValueError(f"URL {url!r}: unsupported scheme {scheme!r}; write {_URL_FORMS}")
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError(f"URL {url!r} has a #fragment, which is never sent; remove it")
    http_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme == "http+unix":
        socket_path = unquote(parts.netloc)
        if not socket_path.startswith("/"):
            raise ValueError(
                f"URL {url!r}: the socket path must be absolute, with its slashes written "
                "as %2F: http+unix://%2Frun%2Fadapter.sock/PATH"
            )
        return AdapterTarget("unix", "http://localhost" + http_path, socket_path, http_path)
    if not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"URL {url!r} has a bad port") from None
    if port == 0:
        raise ValueError(f"URL {url!r} has a bad port")
    return AdapterTarget(scheme, url, None, http_path)


def _unix_target(url: str, rest: str) -> AdapterTarget:
    # The socket path runs to the first ":/"; what follows is the HTTP path, as in
    # unix:///run/plugins/flocker.sock:/flocker-adapter.
    if not rest.startswith("/"):
        raise ValueError(
            f"URL {url!r}: the socket path must be absolute: unix:///run/adapter.sock:/PATH"
        )
    cut = rest.find(":/")
    socket_path, http_path = (rest, "/") if cut < 0 else (rest[:cut], rest[cut + 1:])
    if socket_path.endswith("/"):
        raise ValueError(f"URL {url!r}: the socket path {socket_path!r} names a directory")
    if socket_path.endswith(":"):
        raise ValueError(
            f"URL {url!r}: the socket path ends with ':'; an HTTP path is written "
            f"unix://{socket_path}/PATH"
        )
    return AdapterTarget("unix", "http://localhost" + http_path, socket_path, http_path)


def _parse_size(text: str) -> int | None:
    """Bytes in ``4MiB``, ``512KiB``, ``1MB`` or ``4096``; None if not a whole number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        return None
    size = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size != size.to_integral_value():
        return None
    return int(size)
