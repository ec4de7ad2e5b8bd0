"""A JSON request body as the daemon decodes it, written out so that any JSON reader reads the same.

dockerd decodes bodies with Go's ``encoding/json`` into its API types: an object key matches a
struct field without regard to case (``hostconfig`` is ``HostConfig``, ``PRIVILEGED`` is
``Privileged``), a repeated key decodes into what the earlier one left, trailing data after the
first value is ignored, and a lone surrogate escape is U+FFFD. An adapter that reads the body with
Python's ``json`` (as the SDK's ``request.json`` does), or any other language's reader, sees
something else: two keys where the daemon sees one field, the first of two values where the
daemon takes the last. ``canonical_body`` turns a body into the one spelling both agree on: every
struct key in its field's own spelling, once, duplicates resolved as Go resolves them. The proxy
shows hooks that spelling and forwards it, so what the daemon acts on is what the hooks saw.

Which objects are structs (keys fold) and which are maps (keys are data: labels, options, network
names) comes from the API reference (``api_bodies``, generated from moby's swagger.yaml). A body
that cannot be written out unambiguously raises ``AmbiguousBody``, which the proxy answers with
``400``: duplicates whose merge depends on the Go version (arrays of objects), a value followed by
``null``, keys of an object the reference leaves open that differ only in case, and JSON the
daemon could not read at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from powerstrip.core import api_bodies
from powerstrip.core.paths import SpellingError, canonical_path, split_version

__all__ = ["AmbiguousBody", "Canonical", "body_shape", "canonical_body", "respell"]

SCALAR = "scalar"
ANY = "any"
STRSLICE = "strslice"


class AmbiguousBody(ValueError):
    """A body that cannot be shown to hooks as the daemon will read it; the message says why."""


@dataclass(frozen=True, slots=True)
class Canonical:
    """A body in its canonical spelling: ``text``, and whether it differs from what was sent
    (``changed``: a key respelled or repeated, trailing data, a lone surrogate, a StrSlice given as
    one string). An unchanged body is forwarded as the client's own bytes."""

    text: str
    changed: bool


class _Number(str):
    """A JSON number, kept as written: re-encoding through float would change what the daemon
    reads (``1e400``, ``0.1000000000000000055511151231257827``)."""


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def _no_constant(name: str) -> Any:
    raise AmbiguousBody(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_no_constant,
                            parse_float=_Number, parse_int=_Number)
_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_SPACE = " \t\r\n"
#: A surrogate can only reach a decoded string through an escape (the text is valid UTF-8).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _fold(key: str) -> str:
    """A key as Go's encoding/json compares it with the daemon's (ASCII) field names: ASCII letters
    either case, U+212A KELVIN SIGN as k, U+017F LONG S as s; any other character only itself."""
    return key.translate(_FOLD)


_FOLD = {ord(c): ord(c.lower()) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_FOLD.update({0x212A: ord("k"), 0x017F: ord("s")})


class _Struct:
    """A Go struct: its fields by name, and by folded name for keys spelled otherwise."""

    __slots__ = ("fields", "folded")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.folded: dict[str, str] = {}


class _Map:
    """A Go map: keys are data, matched exactly."""

    __slots__ = ("element",)

    def __init__(self, element: Any) -> None:
        self.element = element


class _Array:
    """A Go slice."""

    __slots__ = ("element",)

    def __init__(self, element: Any) -> None:
        self.element = element


def _compile(shape: Any, named: dict[str, Any]) -> Any:
    """A shape of ``api_bodies`` as nodes, each named definition built once (some are
    recursive), so that walking a body looks nothing up by name."""
    if isinstance(shape, str):
        return shape
    if "r" in shape:
        name = shape["r"]
        if name not in named:
            definition = api_bodies.DEFINITIONS[name]
            if isinstance(definition, dict) and "s" in definition:
                node = named[name] = _Struct()
                _fill(node, definition["s"], named)
            else:
                named[name] = _compile(definition, named)
        return named[name]
    if "s" in shape:
        node = _Struct()
        _fill(node, shape["s"], named)
        return node
    if "m" in shape:
        return _Map(_compile(shape["m"], named))
    return _Array(_compile(shape["a"], named))


def _fill(node: _Struct, fields: dict[str, Any], named: dict[str, Any]) -> None:
    for name, shape in fields.items():
        node.fields[name] = _compile(shape, named)
        node.folded.setdefault(_fold(name), name)


class _Walk:
    """One body's walk; ``changed`` records whether the canonical spelling differs."""

    def __init__(self, surrogates: bool) -> None:
        self.changed = False
        #: The text escapes a surrogate somewhere: strings must be looked at one by one.
        self.surrogates = surrogates

    def value(self, shape: Any, value: Any, where: str) -> Any:
        if isinstance(value, _Pairs):
            if isinstance(shape, _Struct):
                return self.struct(shape, value, where)
            if isinstance(shape, _Map):
                return self.mapping(shape.element, value, where)
            return self.open_object(value, where)
        if isinstance(value, list):
            element = shape.element if isinstance(shape, _Array) else ANY
            return [self.value(element, item, f"{where}[{i}]") for i, item in enumerate(value)]
        if type(value) is str:
            if shape is STRSLICE:
                self.changed = True  # StrSlice.UnmarshalJSON: one string is a list of it
                return [self.string(value)]
            return self.string(value) if self.surrogates else value
        return value

    def string(self, value: str) -> str:
        if self.surrogates and _SURROGATE.search(value):
            self.changed = True  # Go reads a lone surrogate escape as U+FFFD
            return _SURROGATE.sub("\ufffd", value)
        return value

    def struct(self, node: _Struct, pairs: _Pairs, where: str) -> dict[str, Any]:
        fields = node.fields
        out: dict[str, Any] = {}
        unknown: dict[str, str] | None = None
        for key, item in pairs:
            if self.surrogates:
                key = self.string(key)
            if key in fields:
                name = key
            else:
                name = node.folded.get(_fold(key))
                if name is None:
                    # Not a field the reference knows: kept as spelled. Two such keys the
                    # daemon might read as one field cannot both be shown as it reads them.
                    if unknown is None:
                        unknown = {}
                    other = unknown.setdefault(_fold(key), key)
                    if other != key or key in out:
                        raise AmbiguousBody(f"{where} has the keys {other!r} and {key!r}, "
                                            f"which the daemon may read as one field")
                    out[key] = self.value(ANY, item, f"{where}.{key}")
                    continue
                self.changed = True
            shape = fields[name]
            value = (self.value(shape, item, f"{where}.{name}")
                     if isinstance(item, list) or (type(item) is str and (
                         shape is STRSLICE or self.surrogates))
                     else item)
            if name in out:
                self.changed = True
                out[name] = self.merge(shape, out[name], value, f"{where}.{name}")
            else:
                out[name] = value
        return out

    def mapping(self, element: Any, pairs: _Pairs, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in pairs:
            if self.surrogates:
                key = self.string(key)
            if key in out:
                # Go decodes each map element afresh and stores it: the later one replaces.
                self.changed = True
            out[key] = self.value(element, item, f"{where}[{key!r}]")
        return out

    def open_object(self, pairs: _Pairs, where: str) -> dict[str, Any]:
        """An object the reference leaves open: the daemon may read it as a map (keys exact, the
        later one wins) or as a struct it knows (keys fold, values merge); only a body in which
        both readings agree can be shown."""
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for key, item in pairs:
            if self.surrogates:
                key = self.string(key)
            other = seen.setdefault(_fold(key), key)
            if other != key or key in out:
                raise AmbiguousBody(f"{where} has the keys {other!r} and {key!r}, which the "
                                    f"daemon may read as one")
            out[key] = self.value(ANY, item, f"{where}.{key}")
        return out

    def merge(self, shape: Any, old: Any, new: Any, where: str) -> Any:
        """The value Go leaves when ``new`` is decoded into ``old`` (a repeated key)."""
        if old is None:
            return new
        if new is None:
            raise AmbiguousBody(f"{where} is given a value and then null, which the daemon "
                                f"reads differently for different fields")
        if isinstance(old, dict) and isinstance(new, dict):
            if isinstance(shape, _Struct):
                out = dict(old)
                for name, value in new.items():
                    out[name] = (self.merge(shape.fields.get(name, ANY), out[name], value,
                                            f"{where}.{name}") if name in out else value)
                return out
            if isinstance(shape, _Map):
                return {**old, **new}
        if isinstance(old, list) and isinstance(new, list):
            if shape is STRSLICE or not old or (
                    isinstance(shape, _Array) and shape.element is SCALAR):
                return new
            if isinstance(shape, _Array):
                raise AmbiguousBody(f"{where} is given twice as an array of objects, which the "
                                    f"daemon merges element by element")
        if shape is SCALAR and not isinstance(old, (dict, list)) \
                and not isinstance(new, (dict, list)):
            return new
        raise AmbiguousBody(f"{where} is given twice, and the daemon's reading of the second "
                            f"depends on its Go types")

    def top(self, shape: Any, value: Any) -> Any:
        value = self.value(shape, value, "body")
        if shape is _CREATE and isinstance(value, dict):
            value = self.legacy_host_config(value)
        return value

    def legacy_host_config(self, body: dict[str, Any]) -> dict[str, Any]:
        """A create body's top-level HostConfig fields where the daemon takes them.

        dockerd's create body embeds a second HostConfig (``runconfig.ContainerConfigWrapper``)
        whose fields sit at the top level. Without a ``HostConfig`` object they are the
        container's host configuration (``{"Image": "busybox", "Privileged": true}`` is a
        privileged container); with one, they count only for the five fields
        ``getHostConfig`` copies where the object leaves them zero. Moved into the object, they
        are where every hook looks for them, and the daemon reads the same.
        """
        promoted = {key: body[key] for key in body if key in _PROMOTED}
        if not promoted:
            return body
        self.changed = True
        out = {key: value for key, value in body.items() if key not in promoted}
        inner = out.get("HostConfig")
        if not isinstance(inner, dict):
            out["HostConfig"] = promoted
            return out
        inner = dict(inner)
        for key in _COPIED:
            if not _zero(promoted.get(key)) and _zero(inner.get(key)):
                inner[key] = promoted[key]
        out["HostConfig"] = inner
        return out


def _zero(value: Any) -> bool:
    """Whether a scalar is Go's zero value (what a missing field decodes to)."""
    if value is None or value == "" or value is False:
        return True
    if isinstance(value, _Number):
        try:
            return float(value) == 0
        except ValueError:
            return False
    return False


def _template(path: str) -> re.Pattern[str]:
    # Plugin and image names hold slashes (``vieux/sshfs:latest``): dockerd routes them as ``.+``.
    parts = re.split(r"(\{[^}]+\})", path)
    pattern = "".join(
        (".+" if part == "{name}" and path.startswith("/plugins/") else "[^/]+")
        if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(pattern)


_NAMED: dict[str, Any] = {}
_ROUTES = [(method, _template(path), _compile(shape, _NAMED))
           for method, path, shape in api_bodies.BODIES]
_CREATE = next(shape for (method, _, shape), (_, path, _) in zip(
    _ROUTES, api_bodies.BODIES, strict=True) if (method, path) == ("POST", "/containers/create"))
#: The create body's top-level fields that belong to the embedded HostConfig.
_PROMOTED = frozenset(api_bodies.DEFINITIONS["HostConfig"]["s"]) - frozenset(
    api_bodies.DEFINITIONS["ContainerConfig"]["s"]) - {"HostConfig", "NetworkingConfig"}
#: What ``getHostConfig`` copies from the top level into a HostConfig object that lacks it.
_COPIED = ("Memory", "MemorySwap", "CpuShares", "CpusetCpus", "VolumeDriver")


def _encode(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode(k)}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def canonical_body(shape: Any, text: str) -> Canonical:
    """``text`` (a JSON body) in the spelling the daemon decodes, for a body of ``shape``
    (``body_shape``); AmbiguousBody if it cannot be written out unambiguously. A body of nothing
    but white space is left as it is (the daemon reads no value from it)."""
    start = len(text) - len(text.lstrip(_GO_SPACE))
    if start == len(text):
        return Canonical(text, False)
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise AmbiguousBody(f"the body is not JSON the daemon can read ({exc})") from None
    walk = _Walk(_ESCAPED_SURROGATE.search(text) is not None)
    canonical = walk.top(shape, value)
    if text[end:].strip(_GO_SPACE):
        walk.changed = True  # the daemon reads the first value and ignores the rest
    if not walk.changed:
        return Canonical(text, False)
    return Canonical(_encode(canonical), True)


def respell(shape: Any, text: str) -> str:
    """``canonical_body``'s text alone: how a body a hook wrote is passed on."""
    return canonical_body(shape, text).text


def body_shape(method: str, target: str) -> Any:
    """The shape of the JSON body of a request to ``target`` (as the client spelled it): the
    API's body type for its route, or ``"any"`` for a route whose body the reference does not
    describe."""
    try:
        path = canonical_path(target)
    except SpellingError:
        return ANY
    if path is None:
        return ANY
    _, route = split_version(path)
    for route_method, pattern, shape in _ROUTES:
        if route_method == method and pattern.fullmatch(route):
            return shape
    return ANY
