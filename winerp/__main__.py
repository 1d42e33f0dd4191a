"""``python -m winerp``: the same as the ``winerp`` command."""

import sys

from .cli import main

sys.exit(main())
