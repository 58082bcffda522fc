"""`dctdiff evaluate`: FID between image sets; reconstruction rFID per keep. See `python pipelines/evaluate.py --help`.

An entry point for `ray job submit -- python pipelines/evaluate.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("evaluate", sys.argv[1:]))
