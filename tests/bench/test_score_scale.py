"""``bench/score_scale.py``'s input builder (the measurement itself is the benchmark's job): the
N× input is N files of the same reviews under distinct ids, with lengths that really differ."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "score_scale.py"


def test_scaled_input_is_copies_of_the_base_with_distinct_ids(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_score_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_score_scale"] = module
    spec.loader.exec_module(module)

    module.write_inputs(tmp_path / "in", base_rows=200, copies=3)
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    rows = [[json.loads(line) for line in f.open()] for f in files]
    assert len(files) == 3 and all(len(r) == 200 for r in rows)
    assert [r["text"] for r in rows[0]] == [r["text"] for r in rows[2]]
    ids = [r["id"] for f in rows for r in f]
    assert len(set(ids)) == 600
    lengths = {len(r["text"].split()) for r in rows[0]}
    assert min(lengths) >= 3 and max(lengths) <= 60 and len(lengths) > 30
