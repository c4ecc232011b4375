"""``python -m power_loop``: the ``power-loop`` command (``demo``, ``worker``, ``version``)."""

import sys

from .cli import main

sys.exit(main())
