"""`dctdiff demo`: the whole pipeline on bundled photos, on a laptop CPU. See `python pipelines/demo.py --help`.

An entry point for `ray job submit -- python pipelines/demo.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("demo", sys.argv[1:]))
