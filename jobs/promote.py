"""The quality gate before publication: student vs teacher classifier, int8 vs fp32.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/promote.py --help

A thin entry point for ``ray job submit`` and cluster manifests; the stage is the module
``distil.jobs.promote`` of the installed ``distil`` package (``distil --help`` runs the same code).
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this script's folder first on sys.path, and jobs/distil.py there would shadow
    # the distil package: run the module instead (same interpreter, same arguments, same PID).
    os.execv(sys.executable, [sys.executable, "-m", "distil.jobs.promote", *sys.argv[1:]])
