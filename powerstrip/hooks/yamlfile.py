"""YAML settings files read strictly: the adapters file, and any file an adapter reads.

PyYAML keeps the last of two identical keys without a word (the original Powerstrip lost a
user's pre-hook that way). Here a duplicate key is a fault that names both lines, keys must be
strings, and every fault is reported as ``SOURCE:LINE: message``, all of them at once.

A file is read either as a node tree, for a reader that checks a fixed structure and wants to
report every fault (``Document``, as the adapters file does), or as plain Python values whose
mappings know the line of each key (``load``, as the policy adapter's rules do).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_NULL = _TAG + "null"
_BOOL = _TAG + "bool"
_INT = _TAG + "int"
_FLOAT = _TAG + "float"
_MERGE = _TAG + "merge"


class YamlError(Exception):
    """A YAML file that cannot be used; ``errors`` holds one ``SOURCE:LINE: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        # The list itself is the only argument, so the exception pickles and copies intact.
        super().__init__(list(errors))
        self.errors: list[str] = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


class LinedDict(dict[str, Any]):
    """A mapping read by ``load``: a dict whose ``lines`` give the line of each key."""

    def __init__(self) -> None:
        """An empty mapping with no lines."""
        super().__init__()
        self.lines: dict[str, int] = {}


class Document:
    """One YAML document read as a node tree, so every key and value keeps the line it is on.

    ``root`` is the top node (None for an empty file). Faults found while reading it, by
    ``entries`` or by the caller through ``report``, are collected; ``errors`` lists them.
    Raises YamlError at once for text that is not YAML.
    """

    def __init__(self, text: str, source: str) -> None:
        """Parse ``text``; ``source`` names it in messages."""
        self.source = source
        self._problems: list[tuple[int, str]] = []
        self._merging: set[int] = set()
        try:
            self._loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            raise YamlError(
                [f"{source}:{line}: YAML syntax error: unacceptable character #x{code:04x}: "
                 f"{exc.reason}"]
            ) from None
        try:
            self.root: Node | None = self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise YamlError([f"{source}:{_syntax_error(exc, text)}"]) from None
        except RecursionError:
            raise YamlError([f"{source}:1: YAML syntax error: nested too deeply"]) from None
        finally:
            self._loader.dispose()

    def report(self, where: Node | int, message: str) -> None:
        """Note a fault at node ``where`` (or at a line number)."""
        line = where if isinstance(where, int) else where.start_mark.line + 1
        self._problems.append((line, message))

    def errors(self) -> list[str]:
        """Every fault reported, as ``SOURCE:LINE: message``, in line order."""
        # Sorted so the list reads top to bottom like the file; an anchored node used twice
        # would otherwise report the same fault twice.
        out: list[str] = []
        for line, message in sorted(self._problems, key=lambda problem: problem[0]):
            text = f"{self.source}:{line}: {message}"
            if text not in out:
                out.append(text)
        return out

    def entries(self, node: MappingNode) -> list[tuple[str, Node, Node]]:
        """The ``(key, key node, value node)`` entries of a mapping, in file order.

        Keys must be strings; duplicates are reported and kept, so each value is still checked.
        Entries merged in with ``<<`` come first, unless the mapping sets the same key itself.
        """
        own: list[tuple[str, Node, Node]] = []
        first_line: dict[str, int] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key, value in node.value:
            if key.tag == _MERGE:
                merged.extend(self._merged(value))
                continue
            if not (isinstance(key, ScalarNode) and key.tag == _STR):
                hint = "; quote it" if isinstance(key, ScalarNode) else ""
                self.report(key, f"keys must be strings, got {describe(key)}{hint}")
                continue
            line = key.start_mark.line + 1
            if key.value in first_line:
                self.report(
                    key,
                    f"duplicate key {key.value!r}: it is also on line {first_line[key.value]}; "
                    "YAML would silently keep only the last one",
                )
            else:
                first_line[key.value] = line
            own.append((key.value, key, value))
        # As in PyYAML: the mapping's own keys override merged ones, and among merged mappings
        # the first one listed wins.
        kept: dict[str, tuple[str, Node, Node]] = {}
        for entry in merged:
            if entry[0] not in first_line:
                kept.setdefault(entry[0], entry)
        return list(kept.values()) + own

    def _merged(self, value: Node) -> list[tuple[str, Node, Node]]:
        sources = value.value if isinstance(value, SequenceNode) else [value]
        out: list[tuple[str, Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.report(source, f"'<<' merges mappings only, got {describe(source)}")
            elif id(source) in self._merging:
                self.report(source, "'<<' merges a mapping into itself")
            else:
                self._merging.add(id(source))
                try:
                    out.extend(self.entries(source))
                finally:
                    self._merging.discard(id(source))
        return out

    def scalar(self, node: Node) -> object:
        """The Python value of a null, boolean, number or string node; other nodes give ``node``."""
        if isinstance(node, ScalarNode):
            if node.tag == _STR:
                return node.value
            if node.tag in (_NULL, _BOOL, _INT, _FLOAT):
                return self._loader.construct_object(node)
        return node

    def plain(self, node: Node | None) -> Any:
        """The value of ``node`` as plain Python values, every mapping a ``LinedDict``.

        Faults (duplicate keys, keys that are not strings) are reported, not raised. Each node
        is built once, as PyYAML does: an alias is the same object as its anchor, so a file of
        nested aliases cannot make the result grow without bound.
        """
        built: dict[int, Any] = {}
        building: set[int] = set()

        def value(node: Node | None) -> Any:
            if node is None:
                return None
            if id(node) in built:
                return built[id(node)]
            if id(node) in building:
                self.report(node, "a value that contains itself")
                return None
            building.add(id(node))
            found: Any
            if isinstance(node, MappingNode):
                found = LinedDict()
                for key, key_node, item in self.entries(node):
                    found[key] = value(item)
                    found.lines.setdefault(key, key_node.start_mark.line + 1)
            elif isinstance(node, SequenceNode):
                found = [value(item) for item in node.value]
            else:
                found = self._loader.construct_object(node)
            building.discard(id(node))
            built[id(node)] = found
            return found

        return value(node)


def load(text: str, source: str) -> Any:
    """The YAML document ``text`` as plain Python values; every mapping is a ``LinedDict``,
    whose ``lines`` say where each key is. ``source`` names the file in messages.

    Raises YamlError listing every fault: text that is not YAML, a duplicate key, a key that is
    not a string.
    """
    document = Document(text, source)
    found = document.plain(document.root)
    errors = document.errors()
    if errors:
        raise YamlError(errors)
    return found


def describe(node: Node) -> str:
    """How a message names what was found where something else belongs."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    if node.tag == _BOOL:
        return f"the boolean {node.value}"
    if node.tag in (_INT, _FLOAT):
        return f"the number {node.value}"
    if node.tag == _STR:
        return f"the string {node.value!r}"
    if node.tag == _TAG + "timestamp":
        return f"the date {node.value}"
    return f"a value tagged {node.tag}"


def is_null(node: Node) -> bool:
    """Whether ``node`` is a null (``~``, ``null`` or nothing at all)."""
    return isinstance(node, ScalarNode) and node.tag == _NULL


def is_str(node: Node) -> bool:
    """Whether ``node`` is a string."""
    return isinstance(node, ScalarNode) and node.tag == _STR


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> str:
    """``LINE: message`` for a YAML syntax error, at the point where the parser gave up."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    # "End of stream" is marked past the final newline, on a line editors do not show.
    line = max(1, min(line, len(text.splitlines())))
    parts = []
    if exc.context:
        where = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        parts.append(f"{exc.context}{where}")
    if exc.problem:
        parts.append(exc.problem)
    return f"{line}: YAML syntax error: {', '.join(parts) or 'cannot parse'}"
