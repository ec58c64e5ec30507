"""scripts/experiments/kd_temperature.py: the teacher's top-k mass per temperature, read from a real cache, and
the per-temperature KL curves it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distil import storage

REPO = Path(__file__).resolve().parents[2]
_train = Path(__file__).resolve().parents[1] / "train" / "stage3_data.py"
_spec = importlib.util.spec_from_file_location("stage3_data", _train)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)


def _bench():
    sys.path.insert(0, str(REPO / "scripts" / "experiments"))
    try:
        import kd_temperature
    finally:
        sys.path.pop(0)
    return kd_temperature


def test_topk_mass_is_the_cached_share_at_each_temperature_and_kl_curves_print(
    tmp_path, real_tokenizer_dir, tiny_teacher_dir, capsys
):
    prepared = stage3_data.write_prepared(str(tmp_path / "prepared"), real_tokenizer_dir)
    cache = stage3_data.build_cache(prepared, str(tmp_path / "caches"), tiny_teacher_dir)
    bench = _bench()
    mass = bench.topk_mass(cache)
    assert sorted(mass) == [1.0, 2.0]

    # the same share computed from the raw columns: log p_T = log p_1 / T - c_T
    table = pq.read_table([storage.join(cache, f) for f in storage.committed_files(cache)])
    lp = np.concatenate(table.column("target_logprobs").to_numpy()).astype(np.float64)
    lp = lp.reshape(-1, 8)
    logz = np.concatenate(table.column("target_logz").to_numpy()).astype(np.float64)
    direct = {1.0: np.exp(lp).sum(1), 2.0: np.exp(lp / 2 - logz[:, None]).sum(1)}
    for t, m in mass.items():
        assert m["positions"] == len(lp)
        assert abs(m["mean"] - direct[t].mean()) < 1e-3, (t, m, direct[t].mean())
        assert 0.0 < m["p10"] <= m["median"] <= 1.0
    # tempering flattens the teacher: its top k hold less of it at T = 2
    assert mass[2.0]["mean"] < mass[1.0]["mean"]

    out = bench.main(
        ["--cache", cache, "--teacher", str(tiny_teacher_dir), "--steps", "2",
         "--batch-size", "4", "--warmup-steps", "0", "--eval-every", "1", "--eval-batches", "1",
         "--threads", "1"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    for t in (1.0, 2.0):
        kl = [h["eval_kl_to_teacher"] for h in out["curves"][t]["history"]]
        assert [h["step"] for h in out["curves"][t]["history"]] == [1, 2]
        assert all(np.isfinite(kl)) and min(kl) >= 0
        assert f"| {t:g} | {kl[0]:.4f} | {kl[1]:.4f} |" in printed
