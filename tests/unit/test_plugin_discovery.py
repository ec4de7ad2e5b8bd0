"""Finding a Docker plugin by name as dockerd does, and adapter mappings that name one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from powerstrip.hooks.config import ConfigError, load_config
from powerstrip.plugins.discovery import PluginNotFound, find_plugin


def make_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_sockets_first_then_spec_and_json_files(tmp_path):
    sockets, specs = tmp_path / "run", tmp_path / "etc"
    specs.mkdir()
    (specs / "opa.spec").write_text("tcp://127.0.0.1:9999\n")
    assert find_plugin("opa", [str(sockets)], [str(specs)]) == "tcp://127.0.0.1:9999"
    held = make_socket(sockets / "opa.sock")
    try:
        assert find_plugin("opa", [str(sockets)], [str(specs)]) == f"unix://{sockets}/opa.sock"
    finally:
        held.close()
    (specs / "casbin").mkdir()
    (specs / "casbin" / "casbin.json").write_text('{"Name": "casbin", "Addr": "unix:///x.sock"}')
    assert find_plugin("casbin", [str(sockets)], [str(specs)]) == "unix:///x.sock"
    held = make_socket(sockets / "nested" / "nested.sock")
    try:
        assert find_plugin("nested", [str(sockets)], []) == f"unix://{sockets}/nested/nested.sock"
    finally:
        held.close()


def test_what_is_not_a_plugin(tmp_path):
    (tmp_path / "file.sock").write_text("")
    with pytest.raises(PluginNotFound, match="no plugin 'file': looked for"):
        find_plugin("file", [str(tmp_path)], [])
    (tmp_path / "bad.json").write_text('{"Addr": "https://x", "TLSConfig": {"CAFile": "c"}}')
    with pytest.raises(ValueError, match="TLSConfig is not supported"):
        find_plugin("bad", [], [str(tmp_path)])
    (tmp_path / "noscheme.spec").write_text("localhost:80")
    with pytest.raises(ValueError, match="not an address with a scheme"):
        find_plugin("noscheme", [], [str(tmp_path)])
    for name in ("", "../etc", "a/b"):
        with pytest.raises(ValueError, match="not a plugin name"):
            find_plugin(name, [], [])


def test_the_search_path_can_be_replaced(tmp_path, monkeypatch):
    (tmp_path / "here.spec").write_text("unix:///run/here.sock")
    monkeypatch.setenv("POWERSTRIP_PLUGIN_PATH", f"/nonexistent:{tmp_path}")
    assert find_plugin("here") == "unix:///run/here.sock"


def config(tmp_path: Path, adapter: str):
    path = tmp_path / "adapters.yml"
    path.write_text('version: 1\nendpoints:\n  "* *": {pre: [a], post: [a]}\n'
                    f"adapters:\n  a: {adapter}\n")
    return load_config(str(path))


def test_plugin_mappings(tmp_path):
    by_name = config(tmp_path, "{plugin: authz, name: opa-docker-authz}").adapters["a"]
    assert (by_name.plugin, by_name.plugin_name, by_name.timeout) == (
        "authz", "opa-docker-authz", 30.0)
    assert by_name.target.kind == "plugin" and by_name.url == "plugin opa-docker-authz"
    by_socket = config(tmp_path, '{plugin: authz, socket: "unix:///run/p.sock", timeout: 3}')
    spec = by_socket.adapters["a"]
    assert (spec.target.socket_path, spec.target.http_path, spec.timeout) == (
        "/run/p.sock", "/AuthZPlugin.AuthZReq", 3.0)


@pytest.mark.parametrize(("adapter", "message"), [
    ("{plugin: volume, name: x}", "'plugin' of adapter 'a' must be one of authz"),
    ("{plugin: authz}", "give its 'name'"),
    ("{plugin: authz, name: x, socket: /x.sock}", "one of them"),
    ('{plugin: authz, name: x, url: "http://x/"}', "not a 'url'"),
    ("{name: x}", "gives a plugin name but no 'plugin: authz'"),
    ("{plugin: authz, name: x, protocol: 2}", "'protocol' and 'credentials' do not apply"),
    ("{plugin: authz, socket: relative.sock}", "must be unix:///PATH"),
    ("{plugin: [authz], name: x}", "'plugin' of adapter 'a' must be a string"),
])
def test_bad_plugin_mappings_name_file_and_line(tmp_path, adapter, message):
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, adapter)
    assert message in str(raised.value) and "adapters.yml:5" in str(raised.value)
