"""`python -m dctdiff SUBCOMMAND ...`."""

import sys

from dctdiff.commands import main

sys.exit(main())
