"""``python -m opensapiens`` = the ``opensapiens`` command."""

import sys

from .cli.main import main

sys.exit(main())
