"""Two real unix users, each running the docker CLI against one unix listener: the kernel tells
Powerstrip who each is (SO_PEERCRED), and the adapters file's ``clients`` allowlist lets one in
and refuses the other with a 403 naming who it was taken to be, before the daemon hears of it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip.testing import short_tmpdir
from powerstrip_dev.processes import ProxyService, start_proxy, stop_process
from tests.e2e.conftest import DOCKER_CLI

pytestmark = pytest.mark.timeout(120)

GROUP = "ps-test-docker"
USERS = ("ps-alice", "ps-bob")


def _ensure_users() -> None:
    """The test's group and users, made once per machine (the test runs as root)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, timeout=30)
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh",
                            "-G", GROUP, user], check=True, timeout=30)


@pytest.fixture
def shared_listener(engine) -> Iterator[tuple[ProxyService, Path]]:
    if os.geteuid() != 0:
        pytest.fail("this test makes unix users: it must run as root, as make test does")
    _ensure_users()
    directory = Path(short_tmpdir("ps-users-"))
    directory.chmod(0o755)  # the users must reach the socket inside it
    socket_path = directory / "ps.sock"
    config = directory / "adapters.yml"
    config.write_text("version: 1\nendpoints: {}\nadapters: {}\n"
                      "clients:\n  allow:\n    - {user: ps-alice}\n")
    proxy = start_proxy(engine.host, "--socket-group", GROUP, logdir=directory,
                        listen=f"unix://{socket_path}", config=config, name="users")
    try:
        yield proxy, directory
    finally:
        stop_process(proxy.proc)
        shutil.rmtree(directory, ignore_errors=True)


def as_user(user: str, host: str, home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    config = home / user
    config.mkdir(exist_ok=True)
    shutil.chown(config, user)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": host,
           "DOCKER_CONFIG": str(config), "HOME": str(config)}
    return subprocess.run(["runuser", "-u", user, "--", DOCKER_CLI, *args], env=env,
                          capture_output=True, timeout=60)


def test_each_user_is_known_by_name_and_only_the_allowed_one_gets_in(shared_listener) -> None:
    proxy, directory = shared_listener
    alice = as_user("ps-alice", proxy.docker_host, directory, "version", "--format",
                    "{{.Server.Version}}")
    assert alice.returncode == 0, alice.stderr
    assert alice.stdout.strip()
    bob = as_user("ps-bob", proxy.docker_host, directory, "version", "--format",
                  "{{.Server.Version}}")
    assert bob.returncode != 0
    uid = pwd.getpwnam("ps-bob").pw_uid
    assert f"unix user ps-bob (uid {uid})".encode() in bob.stderr, bob.stderr
