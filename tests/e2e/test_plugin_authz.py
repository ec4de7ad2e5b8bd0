"""The policy adapter as a Docker authorization plugin: the same code that hooks Powerstrip,
served with ``--plugin powerstrip-policy``, guards a dockerd started by the project with
``--authorization-plugin=powerstrip-policy``, with no Powerstrip in the path. dockerd finds the
plugin's socket by name, activates it and calls it on every request of its own socket."""

from __future__ import annotations

import json
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powerstrip.testing import short_tmpdir, start_adapter
from powerstrip_dev.engine import Engine
from tests.e2e.conftest import docker, ok, popen_docker, unique
from tests.rawhttp import Conn

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
NAME = "powerstrip-policy"


def start_policy(plugins: Path) -> Any:
    """The policy adapter, also served as the plugin NAME in ``plugins``."""
    return start_adapter([sys.executable, str(REPO / "adapters" / "policy.py"),
                          "--listen", "127.0.0.1:0", "--plugin", NAME,
                          "--plugin-dir", str(plugins),
                          "--rules", str(REPO / "adapters" / "policy.yml")], "policy-plugin")


@pytest.fixture(scope="module")
def guarded() -> Iterator[dict]:
    """A dockerd whose every request the policy plugin authorizes, and the plugin."""
    root = Path(short_tmpdir("ps-authz-"))
    plugins = root / "plugins"
    policy = start_policy(plugins)
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
        rig = {"engine": engine, "policy": policy, "plugins": plugins}
        yield rig
    finally:
        engine.stop(remove=True)
        policy = rig["policy"] if "rig" in locals() else policy
        log = policy.log()
        policy.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert "Traceback" not in log, log


def test_what_the_rules_allow_runs(guarded) -> None:
    # Only root, the daemon, may reach a plugin that answers for the daemon.
    assert stat.S_IMODE((guarded["plugins"] / f"{NAME}.sock").stat().st_mode) == 0o600
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


def test_dockerd_waits_for_a_restarting_plugin(guarded) -> None:
    """As the plugin documentation says: a call to a plugin that cannot be reached is retried
    with a backoff for up to 30 s, so a plugin that restarts within that time loses no
    request; and a plugin that went away is never taken as an allow."""
    engine: Engine = guarded["engine"]
    guarded["policy"].stop()  # its socket goes with it
    assert not (guarded["plugins"] / f"{NAME}.sock").exists()
    started = time.monotonic()
    waiting = popen_docker(engine.host, "run", "--rm", "busybox", "echo", "after the restart")
    time.sleep(2)
    assert waiting.poll() is None  # still waiting for the plugin, not allowed without it
    guarded["policy"] = start_policy(guarded["plugins"])
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out == b"after the restart\n" and time.monotonic() - started >= 2
    refused = docker(engine.host, "run", "--rm", "--privileged", "busybox", "true")
    assert refused.returncode != 0 and b"refused by policy rule privileged" in refused.stderr
