"""Stage 3: distil a student from the teacher cache with Ray Train (DDP over N workers).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/distil.py --help

A thin entry point for ``ray job submit`` and cluster manifests; the stage is the module
``distil.jobs.distil`` of the installed ``distil`` package (``distil --help`` runs the same code).
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this script's folder first on sys.path, and jobs/distil.py there would shadow
    # the distil package: run the module instead (same interpreter, same arguments, same PID).
    os.execv(sys.executable, [sys.executable, "-m", "distil.jobs.distil", *sys.argv[1:]])
