"""Make ``import distil`` resolve to the repo's package when a job runs as a script.

``python jobs/X.py`` (and ``ray job submit --working-dir . -- python jobs/X.py``) puts ``jobs/``
first on ``sys.path``, where ``jobs/distil.py`` would shadow the ``distil`` package — and Ray
hands the driver's ``sys.path`` to its workers. So: repo root first, ``jobs/`` out.
"""

import os
import sys

JOBS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(JOBS_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in (JOBS_DIR, ROOT)]
sys.path.insert(0, ROOT)
