"""``python -m fglens.cli``: the `fglens` command, for launchers that run modules (``torchrun -m fglens.cli ...``)."""

import sys

from . import main

sys.exit(main())
