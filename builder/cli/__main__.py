"""``python -m builder.cli``: the ``kiln`` command."""

import sys

from . import main

sys.exit(main())
