"""powerstrip_dev/apishapes.py: which objects of the API reference are structs (keys fold) and
which are maps (keys are data), read from a swagger document."""

from __future__ import annotations

from powerstrip_dev.apishapes import bodies

SWAGGER = {
    "definitions": {
        "ContainerConfig": {"type": "object", "properties": {
            "Image": {"type": "string"},
            "Cmd": {"type": "array", "items": {"type": "string"}},
            "Labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "Volumes": {"type": "object", "additionalProperties": {"type": "object"}},
        }},
        "Resources": {"type": "object", "properties": {"Memory": {"type": "integer"}}},
        "HostConfig": {"allOf": [{"$ref": "#/definitions/Resources"}, {
            "type": "object", "properties": {
                "Privileged": {"type": "boolean"},
                "CapAdd": {"type": "array", "items": {"type": "string"}},
            }}]},
        "Spec": {"type": "object", "properties": {"Name": {"type": "string"}}},
    },
    "paths": {
        "/containers/create": {"post": {"parameters": [
            {"in": "query", "name": "name"},
            {"in": "body", "name": "body", "schema": {"allOf": [
                {"$ref": "#/definitions/ContainerConfig"},
                {"type": "object", "properties": {
                    "HostConfig": {"$ref": "#/definitions/HostConfig"}}}]}}]}},
        "/things/create": {"post": {"parameters": [
            {"in": "body", "name": "body", "schema": {"allOf": [
                {"$ref": "#/definitions/Spec"}, {"type": "object", "example": {"Name": "x"}}]}}]}},
        "/build": {"post": {"parameters": [
            {"in": "body", "name": "inputStream",
             "schema": {"type": "string", "format": "binary"}}]}},
    },
}


def test_structs_maps_strslices_and_the_create_bodys_promoted_host_config() -> None:
    found, definitions = bodies(SWAGGER)
    routes = {(method, path): shape for method, path, shape in found}
    assert ("POST", "/build") not in routes, "a binary body is not JSON"
    create = routes[("POST", "/containers/create")]["s"]
    assert create["Image"] == "scalar" and create["Cmd"] == "strslice"
    assert create["Labels"] == {"m": "scalar"} and create["Volumes"] == {"m": "any"}
    assert create["HostConfig"] == {"r": "HostConfig"}
    # dockerd reads the embedded HostConfig's fields from the top level too.
    assert create["Privileged"] == "scalar" and create["Memory"] == "scalar"
    assert definitions["HostConfig"]["s"]["CapAdd"] == "strslice"
    assert routes[("POST", "/things/create")] == {"r": "Spec"}
    # The legacy start body the current reference no longer lists.
    assert routes[("POST", "/containers/{id}/start")] == {"r": "HostConfig"}
