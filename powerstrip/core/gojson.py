"""Reading JSON as the Docker daemon does: Go's ``encoding/json`` (dockerd 20.10 is built with
Go 1.19).

The daemon is more lenient than Python's ``json`` module in ways an adapter that enforces rules
must follow: object keys match struct fields case-insensitively (with Unicode simple folding:
U+212A KELVIN SIGN is k, U+017F LONG S is s), a repeated key decodes *into* what the earlier one
left (objects merge field by field), only the first JSON value of a body is read (trailing data
is ignored), and a lone surrogate escape becomes U+FFFD. ``go_decode(kind, text)`` decodes into a
described Go type (``Struct``, ``Ptr``, ``Slice``, ``Map``, ``BOOL``, ``STRING``, ``STRSLICE``,
``ANY``) and gives what the daemon would see; ``go_fold_equal`` is the key comparison alone.
``docs/policy.md`` lists the behaviours, each probed against the real daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANY", "BOOL", "STRING", "STRSLICE", "GoJSONError", "GoSlice", "Map", "Ptr", "Slice",
    "Struct", "go_decode", "go_fold_equal", "go_keys", "go_value",
]



class GoJSONError(ValueError):
    """A body dockerd's decoder would reject (syntax or type error): the daemon answers 4xx/5xx.
    An adapter enforcing rules refuses it rather than reason about a half-decoded value."""


@dataclass(frozen=True)
class Struct:
    """A Go struct: its JSON field names in declaration order, each with its kind. Decoded, it is
    a dict holding the fields that were set (a missing field is Go's zero value)."""

    fields: tuple[tuple[str, Any], ...]

    def lookup(self, key: str) -> str | None:
        """The field a JSON object key decodes into, as encoding/json chooses it: an exact match,
        else the first field equal under Unicode simple case folding; None if none."""
        names = [name for name, _ in self.fields]
        if key in names:
            return key
        return next((name for name in names if go_fold_equal(key, name)), None)

    def kind(self, name: str) -> Any:
        """The kind of field ``name``."""
        return dict(self.fields)[name]


@dataclass(frozen=True)
class Ptr:
    """A Go pointer: null makes it nil (None); a value decodes into what it already points to."""

    elem: Any


@dataclass(frozen=True)
class Slice:
    """A Go slice. A JSON array decodes element by element into the elements already there."""

    elem: Any


@dataclass(frozen=True)
class Map:
    """A Go map with string keys: an object adds its keys to the map already there."""

    elem: Any


BOOL = "bool"
STRING = "string"
#: docker's strslice.StrSlice (CapAdd, Cmd, ...): a JSON array of strings or a single string.
STRSLICE = "strslice"
#: A field the policy does not look at: decoded as interface{} (replaced whole), never checked.
ANY = "any"


class GoSlice(list):  # type: ignore[type-arg]
    """A decoded slice, remembering its backing array: Go 1.19 grows a slice within its capacity
    without clearing it, so elements a shorter array cut off come back when a later duplicate
    key's array is longer. Keeping every element ever decoded is a superset of what Go keeps,
    and only ever shows the policy more to refuse, never less."""

    backing: list[Any]


def go_fold_equal(key: str, name: str) -> bool:
    """Whether a JSON key matches the ASCII field name ``name`` under Unicode simple folding.

    Go's ``bytes.EqualFold`` semantics, which encoding/json uses for keys: ASCII letters match
    either case, and two non-ASCII letters fold to ASCII ones, U+212A KELVIN SIGN to k and U+017F
    LONG S to s. Nothing else does: U+0131 (dotless i) is not i, however Python upper-cases it.
    """
    if len(key) != len(name):
        return False
    for k, n in zip(key, name, strict=True):
        if k == n:
            continue
        lower = n.lower()
        if not (n.isascii() and n.isalpha()):
            return False
        if k not in (lower, n.upper()) and not (
            (lower == "k" and k == "\u212a") or (lower == "s" and k == "\u017f")
        ):
            return False
    return True


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def _no_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character {name[0]!r} looking for beginning of value")


_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_no_constant)
_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_SPACE = " \t\r\n"


def _first_value(text: str) -> Any:
    """The first JSON value of ``text``: dockerd's ``json.NewDecoder(body).Decode`` reads one
    value and leaves whatever follows unread (``{...} garbage`` creates a container)."""
    start = len(text) - len(text.lstrip(_GO_SPACE))
    if start == len(text):
        raise GoJSONError("EOF: the body is empty")
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise GoJSONError(f"invalid JSON: {exc}") from None
    return value


def go_decode(kind: Any, text: str) -> Any:
    """Decode the JSON ``text`` into a value of ``kind`` as dockerd would; GoJSONError if it would
    fail. A top-level ``null`` leaves the zero value."""
    return _decode(kind, _first_value(text), None, "body")


def _json_type(value: Any) -> str:
    if isinstance(value, _Pairs):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    return "number"


def _type_error(value: Any, kind: Any, where: str) -> GoJSONError:
    name = kind if isinstance(kind, str) else type(kind).__name__.lower()
    return GoJSONError(f"json: cannot unmarshal {_json_type(value)} into {where} of type {name}")


def _decode(kind: Any, value: Any, current: Any, where: str) -> Any:
    """``value`` (parsed JSON) decoded into ``current`` (the Go value already there, None for
    zero/nil), giving the new value."""
    if kind == ANY:
        return value
    if value is None:
        # null sets pointers, maps, slices and interfaces to nil, and leaves anything else alone.
        return None if isinstance(kind, (Ptr, Slice, Map)) or kind == STRSLICE else current
    if isinstance(kind, Ptr):
        return _decode(kind.elem, value, current, where)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, kind, where)
        return value
    if kind == STRING:
        if not isinstance(value, str):
            raise _type_error(value, kind, where)
        # Go decodes a lone surrogate escape as U+FFFD.
        return _SURROGATE.sub("\ufffd", value)
    if kind == STRSLICE:
        # StrSlice.UnmarshalJSON: a fresh []string, or else a single string.
        if isinstance(value, str):
            return [_decode(STRING, value, None, where)]
        if isinstance(value, list) and not isinstance(value, _Pairs):
            # A null element leaves its string zero ("").
            return ["" if item is None else _decode(STRING, item, None, where) for item in value]
        raise _type_error(value, kind, where)
    if isinstance(kind, Struct):
        if not isinstance(value, _Pairs):
            raise _type_error(value, kind, where)
        out = dict(current) if current else {}
        for key, item in value:
            name = kind.lookup(key)
            if name is not None:
                out[name] = _decode(kind.kind(name), item, out.get(name), f"{where}.{name}")
        return out
    if isinstance(kind, Map):
        if not isinstance(value, _Pairs):
            raise _type_error(value, kind, where)
        out = dict(current) if current else {}
        for key, item in value:
            # Each map element is decoded from its zero value, then stored.
            out[key] = _decode(kind.elem, item, None, f"{where}[{key}]")
        return out
    if isinstance(kind, Slice):
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise _type_error(value, kind, where)
        backing = list(getattr(current, "backing", current or []))
        items = [
            _decode(kind.elem, item, backing[i] if i < len(backing) else None, f"{where}[{i}]")
            for i, item in enumerate(value)
        ]
        out = GoSlice(items)
        # An empty array makes a new empty slice: nothing is left to come back.
        out.backing = items + backing[len(items):] if items else []
        return out
    raise TypeError(f"unknown kind {kind!r}")  # pragma: no cover - a programming error


def go_keys(obj: Mapping[str, Any], name: str) -> list[str]:
    """The keys of the (Python-parsed) object ``obj`` that the daemon reads as field ``name``,
    in order: every spelling of it under Go's folding."""
    return [key for key in obj if isinstance(key, str) and go_fold_equal(key, name)]


def go_value(obj: Mapping[str, Any], name: str) -> Any:
    """The value the daemon reads for field ``name`` of ``obj``: the last spelling's (None when
    absent). Objects under several spellings merge in Go; ``go_decode`` models that."""
    keys = go_keys(obj, name)
    return obj[keys[-1]] if keys else None
