"""The policy per client, with real parts: real unix users run the docker CLI against one unix
listener, the kernel tells Powerstrip who each is (SO_PEERCRED), and the policy adapter, mapped
with ``protocol: 2`` and reading the shipped ``adapters/policy.yml``, judges each by its own
rules: ``ci`` may bind ``/srv/ci`` and nothing else, ``ops`` may run privileged containers, and
everyone else neither. Every refusal the CLI prints names the client and the rules it got, and
the audit log names the user of every request."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip.testing import short_tmpdir, start_adapter
from powerstrip_dev.engine import Engine
from powerstrip_dev.processes import ProxyService, start_proxy, stop_process
from tests.e2e.conftest import Scratch, docker
from tests.e2e.test_unix_users import GROUP, as_user

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "adapters" / "policy.py"
SHIPPED_RULES = REPO / "adapters" / "policy.yml"
#: The users the shipped rules name, and one they do not.
CI, OPS, OTHER = "ci", "ops", "ps-carol"
CI_DIR = Path("/srv/ci")


def _ensure_user(user: str) -> None:
    """``user``, made if missing (a system user, in the test's group); an existing one is used
    as it is, added to the group if it is not in it, so it can reach the listener."""
    group = grp.getgrnam(GROUP)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh",
                        "-G", GROUP, user], check=True, timeout=30)
        return
    if user not in group.gr_mem and entry.pw_gid != group.gr_gid:
        subprocess.run(["usermod", "-a", "-G", GROUP, user], check=True, timeout=30)


@pytest.fixture
def policed_listener(engine: Engine) -> Iterator[tuple[ProxyService, Path]]:
    """A unix listener whose every request passes the policy adapter (shipped rules,
    protocol 2), and the directory holding it."""
    if os.geteuid() != 0:
        pytest.fail("this test makes unix users: it must run as root, as make test does")
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, timeout=30)
    for user in (CI, OPS, OTHER):
        _ensure_user(user)
    made_ci_dir = not CI_DIR.exists()
    CI_DIR.mkdir(parents=True, exist_ok=True)
    directory = Path(short_tmpdir("ps-policy-"))
    directory.chmod(0o755)  # the users must reach the socket inside it
    policy = start_adapter([sys.executable, str(POLICY), "--listen", "127.0.0.1:0",
                            "--rules", str(SHIPPED_RULES), "--docker", engine.host],
                           "policy-adapter")
    proxy = None
    try:
        config = directory / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "* *": {pre: [policy]}\nadapters:\n'
                          f'  policy: {{url: "{policy.url}", protocol: 2}}\n')
        proxy = start_proxy(engine.host, "--socket-group", GROUP,
                            "--audit-log", str(directory / "audit.log"), logdir=directory,
                            listen=f"unix://{directory / 'ps.sock'}", config=config,
                            name="policy-clients")
        yield proxy, directory
    finally:
        if proxy is not None:
            stop_process(proxy.proc)
        log = policy.log()
        policy.stop()
        shutil.rmtree(directory, ignore_errors=True)
        if made_ci_dir:
            CI_DIR.rmdir()
        assert "Traceback" not in log, log
        # Mapped with protocol 2, the adapter never falls back to version 1 calls.
        assert "called with version 1" not in log, log


def run(listener: tuple[ProxyService, Path], scratch: Scratch, user: str,
        *options: str) -> subprocess.CompletedProcess[bytes]:
    """``docker run --rm OPTIONS busybox true`` as ``user``, through the listener."""
    proxy, directory = listener
    return as_user(user, proxy.docker_host, directory, "run", "--rm", "--name",
                   scratch.name("policy"), *options, "busybox", "true")


def create(listener: tuple[ProxyService, Path], scratch: Scratch, user: str,
           *options: str) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """``docker create OPTIONS busybox true`` as ``user``, through the listener, and its name."""
    proxy, directory = listener
    name = scratch.name("policy")
    return as_user(user, proxy.docker_host, directory, "create", "--name", name, *options,
                   "busybox", "true"), name


def allowed(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def refused(result: subprocess.CompletedProcess[bytes], engine: Engine, user: str, rule: str,
            rules: str) -> None:
    """The run was refused by ``rule``, the message naming the user and the rules it got, and
    the daemon never made the container."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    uid = pwd.getpwnam(user).pw_uid
    assert f"refused by policy rule {rule}: " in stderr, stderr
    assert f"rules for unix user {user} (uid {uid}): {rules} (policy.yml:" in stderr, stderr
    name = result.args[result.args.index("--name") + 1]
    assert docker(engine.host, "inspect", name).returncode != 0, f"{name} was created"


def test_each_user_gets_its_own_rules(policed_listener, engine: Engine, scratch: Scratch) -> None:
    ci_rules = "the clients section for user ci"
    ops_rules = "the clients section for user ops"
    allowed(run(policed_listener, scratch, CI, "-v", f"{CI_DIR}:/x"))
    refused(run(policed_listener, scratch, CI, "-v", "/flocker:/x"), engine, CI, "bind_mounts",
            ci_rules)
    refused(run(policed_listener, scratch, CI, "--privileged"), engine, CI, "privileged",
            ci_rules)

    # A privileged container cannot start where dockerd itself lacks capabilities (a container
    # without CAP_SYS_RESOURCE in its bounding set: runc fails "unable to apply caps"), so the
    # daemon making it privileged is what shows the policy let ops's --privileged through.
    result, name = create(policed_listener, scratch, OPS, "--privileged")
    allowed(result)
    inspected = docker(engine.host, "inspect", "--format", "{{.HostConfig.Privileged}}", name)
    assert inspected.stdout.strip() == b"true", inspected
    refused(run(policed_listener, scratch, OPS, "-v", f"{CI_DIR}:/x"), engine, OPS,
            "bind_mounts", ops_rules)

    for options, rule in ((("-v", f"{CI_DIR}:/x"), "bind_mounts"), (("--privileged",),
                                                                     "privileged")):
        refused(run(policed_listener, scratch, OTHER, *options), engine, OTHER, rule,
                "the default rules")

    # The audit log: every create names its user, and each refusal the policy's message.
    proxy, directory = policed_listener
    lines = [json.loads(line) for line in (directory / "audit.log").read_text().splitlines()]
    creates = [line for line in lines if line["endpoint"] == "* *"
               and line["path"].endswith("/containers/create")]
    by_user: dict[str, list[int]] = {}
    for line in creates:
        client = line["client"]
        assert client["transport"] == "unix" and client["address"] == str(directory / "ps.sock")
        assert client["uid"] == pwd.getpwnam(client["user"]).pw_uid
        by_user.setdefault(client["user"], []).append(line["status"])
        hook = line["hooks"][0]
        assert (hook["adapter"], hook["phase"]) == ("policy", "pre")
        if line["status"] == 403:
            assert hook["outcome"] == "refused"
            assert f"rules for unix user {client['user']} " in hook["message"]
    assert by_user == {CI: [201, 403, 403], OPS: [201, 403], OTHER: [403, 403]}, by_user
