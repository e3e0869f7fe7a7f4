"""`python -m compressmem.cli`: the command line (also what `accelerate launch -m compressmem.cli` runs)."""

import sys

from .main import main

sys.exit(main())
