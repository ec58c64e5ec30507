"""Stage 1 job fixtures: the generated corpora of tests/data/prepare_corpus.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
