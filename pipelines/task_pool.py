"""Stage 4a, task distillation: augment the training reviews and label them with the fine-tuned
teacher (Apache Beam).

    python pipelines/task_pool.py --help

A thin entry point for ``ray job submit`` and cluster manifests; the stage is the module
``distil.pipelines.task_pool`` of the installed ``distil`` package (``distil pool`` runs the same
code).
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this script's folder first on sys.path: run the module of the installed package
    # instead (same interpreter, same arguments, same PID).
    os.execv(sys.executable, [sys.executable, "-m", "distil.pipelines.task_pool", *sys.argv[1:]])
