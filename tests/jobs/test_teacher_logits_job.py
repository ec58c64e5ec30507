"""The Ray job end to end: object storage, cache hit, kill -9 + resume, headless teacher, --help."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teacher"))

from teacher_helpers import make_prepared  # noqa: E402

from distil import storage  # noqa: E402
from distil.data.readers.stream import ReadPosition  # noqa: E402
from distil.packaged import PACKAGED_TEACHER  # noqa: E402
from distil.teacher.cache import TeacherCache  # noqa: E402
from distil.teacher.config import LogitsConfig  # noqa: E402
from distil.teacher.load import MissingMLMHeadError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _listing(url: str) -> dict[str, tuple]:
    """Every object under ``url`` with size and modification time/ETag."""
    fs, path = storage.get_fs(url)
    if not fs.exists(path):
        return {}
    fs.invalidate_cache()
    out = {}
    for name, info in fs.find(path, detail=True).items():
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        out[name] = (info.get("size"), str(stamp), info.get("ETag"))
    return out


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.timeout(240)
def test_cache_on_s3_then_rerun_is_a_cache_hit_that_writes_nothing(
    ray_local, s3_url, tiny_teacher_dir, real_tokenizer_dir, capsys
):
    from distil.jobs.teacher_logits import run

    prepared = f"{s3_url}/prepared"
    make_prepared(prepared, real_tokenizer_dir, n_shards=3, rows_per_shard=8)
    teacher = f"{s3_url}/teacher"
    storage.upload_dir(str(tiny_teacher_dir), teacher)
    cfg = LogitsConfig(
        input=prepared,
        cache_root=f"{s3_url}/cache",
        teacher=teacher,
        k=4,
        num_cpus_per_actor=0.5,
        unit_rows=3,  # 8 rows per shard: units of 3, 3 and 2 rows
    )
    first = run(cfg)
    assert not first["cache_hit"] and first["units_computed"] == first["units"] == 9
    assert first["cache_url"] == f"{s3_url}/cache/{first['key']}"
    cache = TeacherCache(first["cache_url"])
    assert [f["name"] for f in cache.manifest["files"]] == [
        f"shard-0000{i}-0000{u}.parquet" for i in range(3) for u in range(3)
    ]
    assert [f["rows"] for f in cache.manifest["files"]] == [3, 3, 2] * 3
    assert (
        sum(b["target_ids"].shape[0] for b in cache.iter_batches(4, ReadPosition(split="all")))
        == (cache.manifest["positions"])
    )
    before = _listing(f"{s3_url}/cache")
    capsys.readouterr()
    second = run(cfg)
    assert second["cache_hit"] and second["key"] == first["key"]
    assert "cache hit" in capsys.readouterr().out
    assert _listing(f"{s3_url}/cache") == before


@pytest.mark.timeout(300)
def test_kill_9_mid_run_then_rerun_gives_a_byte_identical_cache(
    ray_local, tmp_path, tiny_teacher_dir, real_tokenizer_dir
):
    from distil.jobs.teacher_logits import run

    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, n_shards=8, rows_per_shard=64)
    common = {"input": prepared, "teacher": str(tiny_teacher_dir), "batch_size": 4}
    common |= {"torch_threads": 1, "sparsity": "sampled", "k": 8, "unit_rows": 16}
    reference = run(LogitsConfig(cache_root=str(tmp_path / "a"), **common))

    killed_root = tmp_path / "b"
    cache_dir = killed_root / reference["key"]
    cmd = [sys.executable, str(REPO / "jobs" / "teacher_logits.py")]
    cmd += ["--input", prepared, "--cache-root", str(killed_root), "--teacher"]
    cmd += [str(tiny_teacher_dir), "--batch-size", "4", "--torch-threads", "1"]
    cmd += ["--sparsity", "sampled", "--k", "8", "--unit-rows", "16"]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 200
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list((cache_dir / "_markers").glob("*.json")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (cache_dir / "manifest.json").exists(), "killed after commit: nothing to resume"
    done_before = len(list((cache_dir / "_markers").glob("*.json")))
    assert 1 <= done_before < 32  # 8 shards x 64 rows in units of 16

    resumed = run(LogitsConfig(cache_root=str(killed_root), **common))
    assert resumed["key"] == reference["key"] and not resumed["cache_hit"]
    assert resumed["units"] == 32 and resumed["units_resumed"] >= done_before
    assert resumed["units_computed"] == 32 - resumed["units_resumed"] >= 1
    a = _tree_bytes(tmp_path / "a" / reference["key"])
    b = _tree_bytes(cache_dir)
    assert sorted(a) == sorted(b) and "manifest.json" in a
    assert all(a[name] == b[name] for name in a)


def test_a_headless_teacher_is_refused_before_any_work(tmp_path, real_tokenizer_dir):
    from distil.jobs.teacher_logits import run

    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir, n_shards=1)
    cfg = LogitsConfig(input=prepared, cache_root=str(tmp_path / "c"), teacher=PACKAGED_TEACHER)
    with pytest.raises(MissingMLMHeadError, match="distil teacher adapt"):
        run(cfg)
    assert not (tmp_path / "c").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "argv",
    [
        ["jobs/teacher_logits.py", "--help"],
        ["jobs/adapt_teacher.py", "--help"],
        ["-m", "distil.cli", "logits", "--help"],
        ["-m", "distil.cli", "teacher", "adapt", "--help"],
    ],
)
def test_entry_points_document_their_options(argv):
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    assert "--input" in out.stdout and "--teacher" in out.stdout
