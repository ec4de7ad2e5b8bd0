"""Writes ``powerstrip/core/api_bodies.py``: the shape of every JSON request body the Engine API
defines, read from moby's ``api/swagger.yaml``.

The proxy shows hooks a JSON body keyed as the daemon decodes it (``powerstrip.core.canonical``):
for that it needs to know, at every level of a body, whether an object is a Go struct (keys match
field names without regard to case) or a map (keys are data, matched exactly). The API reference
says which: an object with ``properties`` is a struct, one with ``additionalProperties`` a map.
Writing those tables by hand would go stale with every API version; this reads them.

    python -m powerstrip_dev.apishapes path/to/moby/api/swagger.yaml

Shapes in the output: ``"scalar"``; ``"any"`` (an object the reference leaves open, or an
interface{}); ``"strslice"`` (docker's StrSlice: an array of strings, or one string);
``{"s": {field: shape}}`` a struct; ``{"m": shape}`` a map; ``{"a": shape}`` an array;
``{"r": name}`` a named definition.
"""

from __future__ import annotations

import argparse
import pprint
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "powerstrip" / "core" / "api_bodies.py"

#: Fields that are docker's strslice.StrSlice in the daemon's Go types: the reference calls them
#: arrays of strings, and dockerd also takes one string for them (``"Cmd": "sh"`` is ``["sh"]``).
STRSLICE_FIELDS = {
    ("ContainerConfig", "Cmd"), ("ContainerConfig", "Entrypoint"), ("ContainerConfig", "Shell"),
    ("HostConfig", "CapAdd"), ("HostConfig", "CapDrop"),
}

#: Bodies the daemon still reads that the current reference no longer lists: a HostConfig sent
#: with start, which dockerd applies for API versions before 1.24.
EXTRA_BODIES = [("POST", "/containers/{id}/start", {"r": "HostConfig"})]

#: dockerd's create body (runconfig.ContainerConfigWrapper) also embeds a HostConfig, whose fields
#: it reads from the top level when the body has no ``HostConfig`` object: ``{"Image": "busybox",
#: "Privileged": true}`` makes a privileged container. The reference does not say so.
PROMOTED = {("POST", "/containers/create"): "HostConfig"}


class Reader:
    """Turns swagger schemas into shapes, collecting the named definitions they use."""

    def __init__(self, swagger: dict[str, Any]) -> None:
        self.definitions: dict[str, Any] = swagger["definitions"]
        self.used: dict[str, Any] = {}

    def named(self, name: str) -> dict[str, str]:
        if name not in self.used:
            self.used[name] = None  # a recursive definition refers to itself by name
            self.used[name] = self.shape(self.definitions[name], name)
        return {"r": name}

    def shape(self, schema: dict[str, Any], owner: str = "") -> Any:
        if "$ref" in schema:
            return self.named(schema["$ref"].rsplit("/", 1)[-1])
        if "allOf" in schema:
            parts = [part for part in schema["allOf"]
                     if "$ref" in part or part.get("properties") or part.get("allOf")]
            if len(parts) == 1 and "$ref" in parts[0]:
                # A definition with only an example beside it: the definition, by name.
                return self.named(parts[0]["$ref"].rsplit("/", 1)[-1])
            fields: dict[str, Any] = {}
            for part in schema["allOf"]:
                fields.update(self.struct_fields(part, owner))
            return {"s": fields} if fields else "any"
        kind = schema.get("type")
        if kind == "array":
            return {"a": self.shape(schema.get("items", {}))}
        if "properties" in schema:
            return {"s": self.struct_fields(schema, owner)}
        if "additionalProperties" in schema:
            extra = schema["additionalProperties"]
            return {"m": self.shape(extra) if isinstance(extra, dict) else "any"}
        if kind == "object" or kind is None:
            return "any"
        return "scalar"

    def struct_fields(self, schema: dict[str, Any], owner: str = "") -> dict[str, Any]:
        """The fields of a struct schema, following references and allOf."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return self.struct_fields(self.definitions[name], name)
        if "allOf" in schema:
            fields: dict[str, Any] = {}
            for part in schema["allOf"]:
                fields.update(self.struct_fields(part, owner))
            return fields
        fields = {}
        for name, prop in schema.get("properties", {}).items():
            if (owner, name) in STRSLICE_FIELDS:
                fields[name] = "strslice"
            else:
                fields[name] = self.shape(prop, "")
        return fields


def bodies(swagger: dict[str, Any]) -> tuple[list[tuple[str, str, Any]], dict[str, Any]]:
    """Every (method, path template, shape) of a JSON request body, and the definitions used."""
    reader = Reader(swagger)
    found = []
    for path, operations in swagger["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if parameter.get("in") != "body" or schema.get("format") == "binary":
                    continue
                if schema.get("type") == "string":
                    continue  # a raw body (images/create's image source), not JSON
                shape = reader.shape(schema)
                promoted = PROMOTED.get((method.upper(), path))
                if promoted is not None:
                    reader.named(promoted)
                    extra = reader.struct_fields(reader.definitions[promoted], promoted)
                    shape["s"] = {**shape["s"], "Cpuset": "scalar",
                                  **{k: v for k, v in extra.items() if k not in shape["s"]}}
                found.append((method.upper(), path, shape))
    for method, path, shape in EXTRA_BODIES:
        if shape.get("r"):
            reader.named(shape["r"])
        found.append((method, path, shape))
    return found, reader.used


def render(version: str, found: list[tuple[str, str, Any]], definitions: dict[str, Any]) -> str:
    """The module's text."""
    pretty = pprint.PrettyPrinter(width=99, compact=True, sort_dicts=False)
    return (
        "# ruff: noqa: E501 - generated; nesting, not prose, makes the long lines\n"
        f'"""The shapes of the Engine API\'s JSON request bodies, API {version}.\n\n'
        "Generated by ``python -m powerstrip_dev.apishapes api/swagger.yaml`` from moby's API\n"
        "reference; do not edit. ``powerstrip.core.canonical`` reads it; the shapes are described\n"
        'in ``powerstrip_dev/apishapes.py``.\n"""\n\n'
        "from typing import Any\n\n"
        f"API_VERSION = {version!r}\n\n"
        f"#: (method, path template, shape) of each JSON request body.\n"
        f"BODIES: list[tuple[str, str, Any]] = {pretty.pformat(found)}\n\n"
        f"#: The named definitions the bodies refer to.\n"
        f"DEFINITIONS: dict[str, Any] = {pretty.pformat(dict(sorted(definitions.items())))}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Read a swagger.yaml and write the shapes module."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("swagger", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    swagger = yaml.safe_load(args.swagger.read_text())
    found, definitions = bodies(swagger)
    args.out.write_text(render(swagger["info"]["version"], found, definitions))
    print(f"{args.out}: {len(found)} bodies, {len(definitions)} definitions", file=sys.stderr)


if __name__ == "__main__":
    main()
