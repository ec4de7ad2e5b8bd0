"""Testing adapters: the test kit's public surface (implemented in ``powerstrip.kit.testing``).

``pytest_plugins = ["powerstrip.testing"]`` in a ``conftest.py`` brings its fixtures, which exist
only where pytest is installed; everything else here works without it.
"""

from powerstrip.kit.testing import *  # noqa: F403 - the kit's public names, listed in its __all__
from powerstrip.kit.testing import __all__ as _names

__all__ = list(_names)
