"""``python -m unipelt.cli``: the ``unipelt`` command (also how ``torchrun -m unipelt.cli`` starts each rank)."""

import sys

from unipelt.cli import main

sys.exit(main())
