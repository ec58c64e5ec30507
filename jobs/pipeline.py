"""The whole chain (``distil pipeline run``) as one Ray job that submits each stage as its own job.

    ray job submit --address http://HEAD:8265 -- python jobs/pipeline.py --help

A thin entry point for ``ray job submit`` and infra/kuberay/rayjob-pipeline.yaml; the command is
``distil pipeline run`` of the installed ``distil`` package (``distil.chain``).
"""

import os
import sys

if __name__ == "__main__":
    # jobs/distil.py next to this script would shadow the distil package: run the module instead
    # (same interpreter, same arguments, same PID).
    os.execv(sys.executable, [sys.executable, "-m", "distil.cli", "pipeline", "run", *sys.argv[1:]])
