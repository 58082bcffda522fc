"""`dctdiff prepare`: images -> Parquet DCT shards + stats.json (Ray Data). See `python pipelines/prepare.py --help`.

An entry point for `ray job submit -- python pipelines/prepare.py ...`; the job itself is in the dctdiff package.
"""

import sys

from dctdiff.commands import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("prepare", sys.argv[1:]))
