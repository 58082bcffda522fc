"""`dctdiff train`: train a U-ViT in DCT or pixel space (Ray Train, MLflow). See `python pipelines/train.py --help`.

An entry point for `ray job submit -- python pipelines/train.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("train", sys.argv[1:]))
