"""Run identity of the distil stage: derived run names and the resume check (no Ray, no training;
the inputs are committed manifests on the local filesystem)."""

from __future__ import annotations

import logging

import pytest

from distil import storage
from distil.teacher.cache import write_latest_pointer
from distil.train.config import DistilConfig
from distil.train.identity import (
    IDENTITY_FILE,
    RunMismatchError,
    check_resume,
    check_worker_count,
    run_identity,
    teacher_fingerprint,
)


def _cache(root, key: str) -> str:
    url = str(root / key)
    storage.commit(url, {"kind": "teacher_logits", "key": key, "fingerprint": key, "files": []})
    return url


@pytest.fixture
def caches(tmp_path):
    return _cache(tmp_path, "aaaa1111"), _cache(tmp_path, "bbbb2222")


def _cfg(cache: str, **kw) -> DistilConfig:
    return DistilConfig(cache=cache, output="s3://b/student", storage_path="s3://b/runs", **kw)


def _name(cfg: DistilConfig) -> str:
    return run_identity(cfg).default_name


def test_same_settings_same_name_and_kd_settings_change_it(caches):
    a, _ = caches
    base = _name(_cfg(a))
    assert base.startswith("distil-") and base == _name(_cfg(a))
    changes = ({"temperature": 3.0}, {"alpha_ce": 1.0}, {"alpha_cos": 0.0}, {"lr": 1e-3})
    for change in (*changes, {"max_steps": 7}):  # alpha_cos: the cache's sketch term
        assert _name(_cfg(a, **change)) != base, change


def test_locations_scaling_and_cadence_keep_the_name(caches, tmp_path):
    a, _ = caches
    base = _name(_cfg(a))
    same = [
        {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 4, "max_failures": 0},
        {"checkpoint_every": 7, "eval_every": 3, "eval_batches": 1, "log_every": 1},
        {"keep_checkpoints": 9, "run_name": "mine"},
        {"mask_prob": 0.3},  # not used in cached mode
    ]
    for change in same:
        assert _name(_cfg(a, **change)) == base, change
    moved = DistilConfig(cache=a, output=str(tmp_path / "o"), storage_path=str(tmp_path / "r"))
    assert _name(moved) == base


def test_the_cache_enters_by_its_key_and_a_pointer_is_followed(caches, tmp_path):
    a, b = caches
    assert _name(_cfg(a)) != _name(_cfg(b))
    write_latest_pointer(str(tmp_path), a, "aaaa1111")
    pointer = str(tmp_path / "latest.json")
    assert _name(_cfg(pointer)) == _name(_cfg(a))
    write_latest_pointer(str(tmp_path), b, "bbbb2222")  # the pointer moves: a new run
    assert _name(_cfg(pointer)) == _name(_cfg(b))
    assert run_identity(_cfg(pointer)).inputs == {"cache": "bbbb2222"}


def test_teacher_enters_by_fingerprint(caches, tiny_teacher_dir, tmp_path):
    a, _ = caches
    fp = teacher_fingerprint(str(tiny_teacher_dir))
    assert len(fp) == 16 and fp == teacher_fingerprint(str(tiny_teacher_dir))
    with_teacher = _cfg(a, teacher=str(tiny_teacher_dir))
    assert run_identity(with_teacher).inputs["teacher"] == fp
    assert _name(with_teacher) != _name(_cfg(a))
    committed = str(tmp_path / "adapted")
    storage.commit(committed, {"kind": "adapted_teacher", "fingerprint": "feedbeef", "files": []})
    assert teacher_fingerprint(committed) == "feedbeef"


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(storage.NotCommittedError, match="never committed"):
        run_identity(_cfg(str(tmp_path / "nope")))


def test_check_resume_names_the_differences_and_the_fix(caches, caplog):
    a, b = caches
    recorded = run_identity(_cfg(a)).to_json()
    check_resume(recorded, run_identity(_cfg(a)), "of run 'r'")  # same settings: fine
    with pytest.raises(RunMismatchError) as e:
        check_resume(recorded, run_identity(_cfg(b, temperature=3.0)), "of run 'r'")
    msg = str(e.value)
    assert "temperature: checkpoint 2.0, now 3.0" in msg
    assert "cache (input fingerprint): checkpoint 'aaaa1111', now 'bbbb2222'" in msg
    assert "--run-name" in msg and "of run 'r'" in msg
    with pytest.raises(RunMismatchError, match=f"no {IDENTITY_FILE}"):
        check_resume(None, run_identity(_cfg(a)), "of run 'r'")
    with caplog.at_level(logging.WARNING, logger="distil.train.identity"):
        check_resume(recorded, run_identity(_cfg(a, num_workers=4)), "of run 'r'")
    assert "num_workers=4 (checkpoint: 2)" in caplog.text


def test_resume_on_another_worker_count_is_refused_with_the_fix(caches):
    """A rank's position is in its share of the epoch: 2 -> 4 workers would repeat or skip
    rows, so training on is refused, naming the checkpoint's worker count (the job calls this
    only when the run is not finished: a finished run re-exports on any count)."""
    a, _ = caches
    recorded = run_identity(_cfg(a, num_workers=2)).to_json()
    check_worker_count(recorded, run_identity(_cfg(a, num_workers=2)), "of run 'r'")
    with pytest.raises(RunMismatchError) as e:
        check_worker_count(recorded, run_identity(_cfg(a, num_workers=4)), "of run 'r'")
    assert "trained on 2 worker(s)" in str(e.value) and "--num-workers 2" in str(e.value)


def test_a_renamed_field_keeps_the_run_identity(tmp_path):
    """``mlm_probability`` became ``mask_prob``: the identity hashes it under the old name, so
    a run started before the rename resumes, and either name gives the same run."""
    prepared = str(tmp_path / "prepared")
    storage.commit(prepared, {"kind": "prepared", "fingerprint": "pppp", "files": []})

    def online(**kw) -> DistilConfig:
        return DistilConfig(
            mode="online", data=prepared, teacher="packaged:all-minilm-l6-v2", output="o",
            storage_path="s", **kw,
        )  # fmt: skip

    default = run_identity(online())
    assert default.fields["mlm_probability"] == 0.15 and "mask_prob" not in default.fields
    old, new = run_identity(online(mlm_probability=0.2)), run_identity(online(mask_prob=0.2))
    assert old.fingerprint == new.fingerprint != default.fingerprint
