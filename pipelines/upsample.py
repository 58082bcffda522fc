"""`dctdiff upsample`: DCT upsampling of images; comparison with bicubic/Lanczos. See `python pipelines/upsample.py --help`.

An entry point for `ray job submit -- python pipelines/upsample.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("upsample", sys.argv[1:]))
