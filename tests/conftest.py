"""Shared test configuration.

Deliberately light: the unit and fault suites need nothing from here, and the e2e suite keeps its
Docker Engine and proxy fixtures in ``tests/e2e/conftest.py`` so that they are only set up when e2e
tests are collected. Every test that touches sockets runs under pytest-timeout (a global default
in setup.cfg, tightened per test with ``@pytest.mark.timeout``).
"""

import subprocess

import pytest


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which docker CLIs the e2e suite drives, so a machine without the current one shows it.

    Here rather than in ``tests/e2e/conftest.py``: pytest asks only the conftests it loads
    before collecting, which a plain ``pytest`` run does not count that one among."""
    from tests.e2e.conftest import DOCKER_CLI, LEGACY_CLI

    lines = []
    for label, cli in (("docker CLI", DOCKER_CLI), ("legacy docker CLI", LEGACY_CLI)):
        try:
            version = subprocess.run(
                [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                text=True, timeout=10, env={"DOCKER_HOST": "unix:///nonexistent"},
            ).stdout.strip() or "unknown version"
        except OSError as exc:
            version = f"cannot run: {exc}"
        lines.append(f"{label}: {cli} ({version})")
    return lines
