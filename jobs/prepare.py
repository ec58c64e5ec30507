"""Stage 1: corpora -> tokenized, packed Parquet shards (Ray Data).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/prepare.py --help

A thin entry point for ``ray job submit`` and cluster manifests; the stage is the module
``distil.jobs.prepare`` of the installed ``distil`` package (``distil --help`` runs the same code).
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this script's folder first on sys.path, and jobs/distil.py there would shadow
    # the distil package: run the module instead (same interpreter, same arguments, same PID).
    os.execv(sys.executable, [sys.executable, "-m", "distil.jobs.prepare", *sys.argv[1:]])
