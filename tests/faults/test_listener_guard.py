"""``powerstrip serve`` refuses, before serving anything, a listener that would let clients in
unauthenticated from beyond this host, unless ``--insecure-allow-unauthenticated`` says so; and
the TLS flags' files and combinations are usage errors (exit 2) that name what is wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tlscerts import make_certs

pytestmark = pytest.mark.timeout(60)

INSECURE = "--insecure-allow-unauthenticated"


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``powerstrip serve ARGS`` that must end by itself (a refusal)."""
    return subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--upstream",
         f"unix://{tmp_path / 'd.sock'}", *args],
        capture_output=True, text=True, timeout=30, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": ""},
    )


def starts(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Start ``powerstrip serve ARGS``, wait for its printed line, stop it: (line, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "powerstrip", "serve", "--upstream",
         f"unix://{tmp_path / 'd.sock'}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": ""},
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert line.startswith("export DOCKER_HOST="), stderr
    assert proc.returncode == 0, stderr
    return line.strip(), stderr


@pytest.mark.parametrize("listen", ["tcp://0.0.0.0:0", "tcp://[::]:0", "0.0.0.0:0"])
def test_plain_tcp_on_every_interface_is_refused_without_the_flag(tmp_path, listen):
    refused = serve(tmp_path, "--listen", listen)
    assert refused.returncode == 2, refused.stderr
    assert "without authenticating" in refused.stderr and INSECURE in refused.stderr
    assert "DOCKER_HOST" not in refused.stdout


def test_with_the_flag_it_starts_and_warns(tmp_path):
    line, stderr = starts(tmp_path, "--listen", "tcp://0.0.0.0:0", INSECURE)
    assert line.startswith("export DOCKER_HOST=tcp://0.0.0.0:")
    assert "unauthenticated" in stderr and INSECURE in stderr


def test_loopback_starts_with_a_warning_as_the_readme_runs_it(tmp_path):
    line, stderr = starts(tmp_path, "--listen", "tcp://127.0.0.1:0")
    assert line.startswith("export DOCKER_HOST=tcp://127.0.0.1:")
    assert "every local user" in stderr


def test_a_unix_listener_starts_without_a_warning(tmp_path):
    line, stderr = starts(tmp_path, "--listen", f"unix://{tmp_path / 'p.sock'}")
    assert line == f"export DOCKER_HOST=unix://{tmp_path / 'p.sock'}"
    assert "WARNING" not in stderr


def test_an_ssl_description_on_every_interface_is_refused_once_bound(tmp_path):
    certs = make_certs(tmp_path)
    listen = (f"ssl:0:privateKey={certs / 'server-key.pem'}"
              f":certKey={certs / 'server-cert.pem'}")
    refused = serve(tmp_path, "--listen", listen)
    assert refused.returncode == 2, refused.stderr
    assert INSECURE in refused.stderr
    line, _ = starts(tmp_path, "--listen", listen, INSECURE)
    assert line.endswith("DOCKER_TLS_VERIFY=1")


def test_tlsverify_on_every_interface_starts_without_the_flag(tmp_path):
    certs = make_certs(tmp_path)
    line, stderr = starts(tmp_path, "--listen", "tcp://0.0.0.0:0", "--tlsverify",
                          "--tlscacert", str(certs / "ca.pem"),
                          "--tlscert", str(certs / "server-cert.pem"),
                          "--tlskey", str(certs / "server-key.pem"))
    assert line.startswith("export DOCKER_HOST=tcp://0.0.0.0:")
    assert line.endswith(" DOCKER_TLS_VERIFY=1")
    assert "WARNING" not in stderr


def test_tls_without_verify_on_every_interface_is_refused(tmp_path):
    certs = make_certs(tmp_path)
    refused = serve(tmp_path, "--listen", "tcp://0.0.0.0:0", "--tls",
                    "--tlscert", str(certs / "server-cert.pem"),
                    "--tlskey", str(certs / "server-key.pem"))
    assert refused.returncode == 2, refused.stderr
    assert INSECURE in refused.stderr


def test_an_unreadable_file_is_a_usage_error_naming_it(tmp_path):
    certs = make_certs(tmp_path)
    refused = serve(tmp_path, "--listen", "tcp://127.0.0.1:0", "--tlsverify",
                    "--tlscacert", str(tmp_path / "missing-ca.pem"),
                    "--tlscert", str(certs / "server-cert.pem"),
                    "--tlskey", str(certs / "server-key.pem"))
    assert refused.returncode == 2
    assert "--tlscacert" in refused.stderr and "missing-ca.pem" in refused.stderr


def test_tls_settings_come_from_the_environment_too(tmp_path):
    certs = make_certs(tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "powerstrip", "serve", "--listen", "tcp://127.0.0.1:0",
         "--upstream", f"unix://{tmp_path / 'd.sock'}"],
        capture_output=True, text=True, timeout=30, cwd="/",
        env={**os.environ, "POWERSTRIP_CONFIG": "", "POWERSTRIP_TLSVERIFY": "1",
             "POWERSTRIP_TLSCERT": str(certs / "server-cert.pem"),
             "POWERSTRIP_TLSKEY": str(certs / "server-key.pem")},
    )
    assert refused.returncode == 2
    assert "--tlsverify needs --tlscacert" in refused.stderr


def test_workers_on_every_interface_need_the_flag_too(tmp_path):
    refused = serve(tmp_path, "--workers", "2", "--listen", "tcp://0.0.0.0:0")
    assert refused.returncode == 2
    assert INSECURE in refused.stderr


def test_workers_on_every_interface_start_with_the_flag(tmp_path):
    """The workers serve what their parent checked: they are not refused for lack of the flag."""
    line, stderr = starts(tmp_path, "--workers", "2", "--listen", "tcp://0.0.0.0:0", INSECURE)
    assert line.startswith("export DOCKER_HOST=tcp://0.0.0.0:"), stderr
