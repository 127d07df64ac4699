"""``python -m circuitd.cli``: the ``circuitd`` command."""

import sys

from circuitd.cli import main

sys.exit(main())
