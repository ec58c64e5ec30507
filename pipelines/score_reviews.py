"""Stage 4b: score review files with a fine-tuned classifier (Apache Beam).

    python pipelines/score_reviews.py --runner FlinkRunner --help

A thin entry point for ``ray job submit`` and cluster manifests; the stage is the module
``distil.pipelines.score_reviews`` of the installed ``distil`` package (``distil --help`` runs the same code).
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this script's folder first on sys.path: run the module of the installed package
    # instead (same interpreter, same arguments, same PID).
    os.execv(
        sys.executable, [sys.executable, "-m", "distil.pipelines.score_reviews", *sys.argv[1:]]
    )
