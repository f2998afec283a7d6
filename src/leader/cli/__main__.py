"""``python -m leader.cli ...`` (and ``torchrun ... -m leader.cli ...``): the ``leader`` command."""

import sys

from leader.cli import main

sys.exit(main())
