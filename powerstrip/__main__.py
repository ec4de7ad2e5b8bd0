"""``python -m powerstrip``."""

import sys

from powerstrip.cli import main

sys.exit(main())
