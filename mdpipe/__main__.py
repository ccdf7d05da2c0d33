"""``python -m mdpipe``: the ``mdpipe`` command."""

import sys

from .cli import main

sys.exit(main())
