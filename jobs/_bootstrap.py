"""Make ``import distil`` resolve to the submitted working dir (``ray job submit --working-dir .``)
rather than whatever is installed on the cluster image."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
