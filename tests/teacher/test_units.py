"""Units of work: bounded slices of prepared shards that cover every row once, read exactly,
and give the same cache bytes every time."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from teacher_helpers import build_cache, make_prepared

from distil import storage
from distil.data import shards
from distil.teacher.build import build_in_process, finalize, plan_cache, unit_name
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher
from distil.teacher.units import from_ipc, plan_units, read_unit, to_ipc


def _prepared_rows(prepared: str) -> list[tuple[int, int]]:
    """(file index, row) of every prepared row."""
    files = shards.open_prepared(prepared)["files"]
    return [(i, r) for i, f in enumerate(files) for r in range(f["rows"])]


@pytest.mark.parametrize("unit_rows", [1, 5, 12, 1000])
def test_units_cover_every_prepared_row_exactly_once(unit_rows, prepared_dir):
    manifest = shards.open_prepared(prepared_dir)
    manifest = {**manifest, "files": [*manifest["files"], {"name": "empty.parquet", "rows": 0}]}
    units = plan_units(manifest, prepared_dir, "out", unit_rows)
    names = [f["name"] for f in manifest["files"]]
    covered = [
        (names.index(u["input"].rsplit("/", 1)[-1]), r)
        for u in units
        for r in range(u["start"], u["stop"])
    ]
    assert covered == _prepared_rows(prepared_dir)  # in order, no gap, no overlap
    assert all(0 < u["stop"] - u["start"] <= unit_rows for u in units)
    assert len({u["name"] for u in units}) == len(units)
    assert len(units) == sum(-(-f["rows"] // unit_rows) for f in manifest["files"])
    with pytest.raises(ValueError, match="unit_rows"):
        plan_units(manifest, prepared_dir, "out", 0)


def test_a_unit_reads_exactly_its_rows_across_row_groups(tmp_path, prepared_dir):
    full = shards.read_table(f"{prepared_dir}/shard-00000.parquet")
    url = str(tmp_path / "small-groups.parquet")
    with open(url, "wb") as f:
        shards.write_table(full, f, row_group_rows=5)  # 12 rows: groups of 5, 5, 2
    assert pq.ParquetFile(url).metadata.num_row_groups == 3
    for start, stop in ((0, 12), (3, 7), (5, 10), (4, 6), (11, 12)):
        got = read_unit({"input": url, "start": start, "stop": stop})
        assert got.equals(full.slice(start, stop - start))
    with pytest.raises(RuntimeError, match="prepare again"):
        read_unit({"input": url, "start": 10, "stop": 14})


def test_unit_payloads_round_trip(prepared_dir):
    table = shards.read_table(f"{prepared_dir}/shard-00001.parquet")
    assert from_ipc(to_ipc(table)).equals(table)


def _cache_files(url: str) -> dict[str, bytes]:
    """Every file of a local cache dir (unit files, markers, manifest) by relative path."""
    root = Path(url)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_units_are_deterministic_and_independent_of_the_unit_size(
    tmp_path, real_tokenizer_dir, tiny_teacher_dir
):
    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, n_shards=2, rows_per_shard=13)
    common = {"sparsity": "sampled", "k": 4, "copies": 2, "row_group_rows": 4}
    a = build_cache(prepared, str(tiny_teacher_dir), str(tmp_path / "a"), unit_rows=5, **common)
    b = build_cache(prepared, str(tiny_teacher_dir), str(tmp_path / "b"), unit_rows=5, **common)
    assert _cache_files(a) == _cache_files(b)  # manifest and every unit file, byte for byte
    files = _cache_files(a)
    assert len([n for n in files if n.startswith("_markers/")]) == 6 and "manifest.json" in files
    names = [n for n in files if n.endswith(".parquet")]
    assert names == [f"shard-0000{s}-0000{u}.parquet" for s in range(2) for u in range(3)]
    for name in names:  # bounded row groups for the reader to seek by
        md = pq.ParquetFile(f"{a}/{name}").metadata
        assert max(md.row_group(g).num_rows for g in range(md.num_row_groups)) <= 4
    # one unit per shard instead: the masking (inputs, positions, labels) is the same
    c = build_cache(prepared, str(tiny_teacher_dir), str(tmp_path / "c"), unit_rows=64, **common)
    assert c != a
    cols = ["seq_id", "copy", "input_ids", "positions", "labels"]
    small = [pq.read_table(f"{a}/{n}", columns=cols) for n in names]
    big = [pq.read_table(f"{c}/shard-0000{s}-00000.parquet", columns=cols) for s in range(2)]
    assert sum(t.num_rows for t in small) == sum(t.num_rows for t in big) == 2 * 13 * 2
    # each file copy-major (its row groups never span two copies); the rows are the same
    for t in small + big:
        copy = t["copy"].to_numpy()
        assert (copy[1:] >= copy[:-1]).all()
    order = [("seq_id", "ascending"), ("copy", "ascending")]
    assert pa.concat_tables(small).sort_by(order).equals(pa.concat_tables(big).sort_by(order))


def test_finalize_refuses_a_cache_with_an_unfinished_unit(tmp_path, prepared_dir, tiny_teacher_dir):
    cfg = LogitsConfig(
        input=prepared_dir, cache_root=str(tmp_path), teacher=str(tiny_teacher_dir), unit_rows=5
    )
    teacher = load_teacher(str(tiny_teacher_dir))
    plan = plan_cache(cfg, teacher.weights_sha256, teacher.model.config.hidden_size)
    build_in_process(plan, cfg)
    victim = plan.units[3]
    storage.remove(storage.marker_url(plan.url, unit_name(victim["name"])))
    storage.remove(storage.join(plan.url, "manifest.json"))
    with pytest.raises(RuntimeError, match=f"{victim['name']} has no completion marker"):
        finalize(plan, cfg)
    # a rerun recomputes just that unit, and the cache is whole again
    manifest = build_in_process(plan, cfg)
    assert [f["name"] for f in manifest["files"]] == [u["name"] for u in plan.units]
    assert manifest["rows"] == 24 and np.all([f["rows"] > 0 for f in manifest["files"]])
