"""`python -m cdc` runs the command-line interface."""

import sys

from cdc.cli import main

sys.exit(main())
