"""``python -m sim``: the same as ``mdpipe sim``."""

import sys

from mdpipe.cli import main

sys.exit(main(["sim", *sys.argv[1:]]))
