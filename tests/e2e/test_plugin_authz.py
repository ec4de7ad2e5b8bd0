"""The policy adapter as a Docker authorization plugin: the same code that hooks Powerstrip,
served with ``--plugin powerstrip-policy``, guards a dockerd started by the project with
``--authorization-plugin=powerstrip-policy``, with no Powerstrip in the path. dockerd finds the
plugin's socket by name, activates it and calls it on every request of its own socket."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip.testing import short_tmpdir, start_adapter
from powerstrip_dev.engine import Engine
from tests.e2e.conftest import docker, ok, unique
from tests.rawhttp import Conn

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
NAME = "powerstrip-policy"


@pytest.fixture(scope="module")
def guarded() -> Iterator[dict]:
    """A dockerd whose every request the policy plugin authorizes, and the plugin."""
    root = Path(short_tmpdir("ps-authz-"))
    plugins = root / "plugins"
    policy = start_adapter([sys.executable, str(REPO / "adapters" / "policy.py"),
                            "--listen", "127.0.0.1:0", "--plugin", NAME,
                            "--plugin-dir", str(plugins),
                            "--rules", str(REPO / "adapters" / "policy.yml")], "policy-plugin")
    engine = Engine(root / "engine", plugin_dir=plugins)
    try:
        assert (plugins / f"{NAME}.sock").is_socket(), policy.log()
        # The test image first, unguarded: the rules refuse an import naming an allowlisted
        # image (docs/policy.md), which is how this engine gets busybox.
        engine.start()
        engine.ensure_image()
        engine.stop()
        engine.args = (f"--authorization-plugin={NAME}",)
        engine.start()
        yield {"engine": engine, "policy": policy}
    finally:
        engine.stop(remove=True)
        log = policy.log()
        policy.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert "Traceback" not in log, log


def test_what_the_rules_allow_runs(guarded) -> None:
    host = guarded["engine"].host
    out = ok(docker(host, "run", "--rm", "busybox", "echo", "allowed by the plugin"))
    assert out == b"allowed by the plugin\n"
    assert "plugin powerstrip-policy: pre-hook POST /v" in guarded["policy"].log()


@pytest.mark.parametrize(("options", "rule"), [
    (("--privileged",), "privileged"),
    (("-v", "/:/host"), "bind_mounts"),
    (("--mount", "type=bind,src=/etc,dst=/x"), "bind_mounts"),
    (("--network", "host"), "host_network"),
])
def test_what_the_rules_forbid_dockerd_refuses_with_the_plugins_message(guarded, options,
                                                                        rule) -> None:
    engine: Engine = guarded["engine"]
    name = unique("authz")
    result = docker(engine.host, "run", "--rm", "--name", name, *options, "busybox", "true")
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    assert f"authorization denied by plugin {NAME}: refused by policy rule {rule}: " in stderr, \
        stderr
    assert docker(engine.host, "inspect", name).returncode != 0  # never created


def test_a_body_dockerd_does_not_show_the_plugin_is_refused(guarded) -> None:
    """A chunked create: dockerd before the fix of CVE-2024-41110 read such a body without
    showing it to authorization plugins. Whether this dockerd shows it (and the rule refuses
    it) or not (and the plugin refuses what it cannot see), it is never allowed."""
    engine: Engine = guarded["engine"]
    body = json.dumps({"Image": "busybox", "HostConfig": {"Privileged": True}}).encode()
    name = unique("authz-chunked")
    conn = Conn(engine.host)
    try:
        conn.send("POST", f"/v1.41/containers/create?name={name}",
                  headers={"Content-Type": "application/json"},
                  chunks=[body[:10], body[10:]])
        response = conn.read()
    finally:
        conn.close()
    assert response.status == 403, (response.status_line, response.body)
    assert f"authorization denied by plugin {NAME}" in response.message(), response.body
    assert docker(engine.host, "inspect", name).returncode != 0
