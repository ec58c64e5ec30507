"""``bench/score_scale.py``'s input builder and its steady rate (the measurement itself is the
benchmark's job): the N× input is N files (or one file) of the same reviews under distinct ids,
with lengths that really differ; the steady rate leaves each worker's first batch out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "score_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_score_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_score_scale"] = module
    spec.loader.exec_module(module)
    return module


def test_scaled_input_is_copies_of_the_base_with_distinct_ids(tmp_path):
    module = _bench()
    module.write_inputs(tmp_path / "in", base_rows=200, copies=3)
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    rows = [[json.loads(line) for line in f.open()] for f in files]
    assert len(files) == 3 and all(len(r) == 200 for r in rows)
    assert [r["text"] for r in rows[0]] == [r["text"] for r in rows[2]]
    ids = [r["id"] for f in rows for r in f]
    assert len(set(ids)) == 600
    lengths = {len(r["text"].split()) for r in rows[0]}
    assert min(lengths) >= 3 and max(lengths) <= 60 and len(lengths) > 30
    module.write_inputs(tmp_path / "one", base_rows=200, copies=3, one_file=True)
    (one,) = (tmp_path / "one").glob("*.jsonl")
    assert [json.loads(line)["id"] for line in one.open()] == ids


def test_steady_rate_leaves_out_each_workers_first_batch():
    # two workers, batches of 4 rows, one batch a second each, half a second apart; each took
    # 5 s to start (model load): the steady rate is 8 rows/s, whatever the start-up
    a = [10.0 + i for i in range(10) for _ in range(4)]
    b = [10.5 + i for i in range(10) for _ in range(4)]
    steady_rate = _bench().steady_rate
    assert steady_rate(a + b, first_rows=2 * 4) == 8.0
    # rows over the span of all the times would count the first batches without their time
    assert len(a + b) / (max(b) - min(a)) > 8.4
    # ten times the rows, the same rate
    a10 = [10.0 + i for i in range(100) for _ in range(4)]
    b10 = [10.5 + i for i in range(100) for _ in range(4)]
    assert steady_rate(a10 + b10, first_rows=8) == 8.0
