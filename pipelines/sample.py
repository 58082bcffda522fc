"""`dctdiff sample`: generate images from a checkpoint (Ray actors). See `python pipelines/sample.py --help`.

An entry point for `ray job submit -- python pipelines/sample.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("sample", sys.argv[1:]))
