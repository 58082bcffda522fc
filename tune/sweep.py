"""`dctdiff sweep`: Ray Tune sweep over training runs, ranked by FID. See `python tune/sweep.py --help`.

An entry point for `ray job submit -- python tune/sweep.py ...`; the sweep itself is in dctdiff.tuning.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("sweep", sys.argv[1:]))
