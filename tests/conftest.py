"""Shared test configuration.

Deliberately light: the unit and fault suites need nothing from here, and the e2e suite keeps its
Docker Engine and proxy fixtures in ``tests/e2e/conftest.py`` so that they are only set up when e2e
tests are collected. Every test that touches sockets runs under pytest-timeout (a global default
in setup.cfg, tightened per test with ``@pytest.mark.timeout``).
"""
