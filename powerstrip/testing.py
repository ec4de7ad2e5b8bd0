"""Testing adapters: the test kit's public surface (implemented in ``powerstrip.kit.testing``).

``pytest_plugins = ["powerstrip.testing"]`` in a ``conftest.py`` brings its fixtures.
"""

from powerstrip.kit.testing import *  # noqa: F403 - the kit's public names, listed in its __all__
from powerstrip.kit.testing import __all__ as _names
from powerstrip.kit.testing import adapter_process, docker_engine, powerstrip_proxy

__all__ = [*_names, "adapter_process", "docker_engine", "powerstrip_proxy"]
