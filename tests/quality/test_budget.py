"""``--budget``: one budgets file per scale, shared by ``scripts/quality.py`` and ``distil demo``."""

from __future__ import annotations

import argparse

from distil.config import add_config_args, config_from_args
from distil.demo import DemoConfig
from distil.demo.plan import budgets_path
from distil.quality.ablation import BUDGET_SCALES, apply_budget, demo_budgets
from distil.quality.config import QualityConfig


def parse(argv: list[str]) -> QualityConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser, QualityConfig)
    return config_from_args(QualityConfig, parser.parse_args(argv))


def test_cpu_default_is_unchanged() -> None:
    cfg = apply_budget(parse([]))
    assert cfg.budget == "cpu"
    assert (cfg.steps, cfg.batch_size, cfg.finetune_steps) == (150, 32, None)
    assert cfg.device == "cpu"


def test_gpu_budget_is_the_demo_full_file() -> None:
    # the file the GPU ablation reads is the one `distil demo --scale full` runs with
    from distil.config import resolve_config_path

    assert budgets_path(DemoConfig(scale="full")) == resolve_config_path(BUDGET_SCALES["gpu"])
    full = demo_budgets(budget="gpu")
    assert BUDGET_SCALES["gpu"] == "demo/full"
    cfg = apply_budget(parse(["--budget", "gpu"]))
    q = full["quality"]
    assert (cfg.steps, cfg.batch_size) == (q["steps"], q["batch_size"])
    assert cfg.device == "cuda" and full["adapt"]["device"] == "cuda"
    # issue 22's floor: >= 20M distillation tokens seen, cached copies > 1, whole corpus
    assert cfg.steps * cfg.batch_size * full["prepare"]["seq_len"] >= 20_000_000
    assert full["logits"]["copies"] > 1
    assert "corpus" not in full
    assert full["adapt"]["token_budget"] >= 3 * 2_900_000


def test_flag_beats_the_budget_file() -> None:
    cfg = apply_budget(parse(["--budget", "gpu", "--steps", "7"]))
    assert cfg.steps == 7
    assert cfg.batch_size == demo_budgets(budget="gpu")["quality"]["batch_size"]


def test_cos_weight_changes_only_the_cosine_rows() -> None:
    from distil.quality.ablation import row_alphas
    from distil.quality.config import ROWS

    base, exp = parse([]), parse(["--cos-weight", "0.25"])
    for name, spec in ROWS.items():
        before, after = row_alphas(base, spec), row_alphas(exp, spec)
        if before.get("alpha_cos", 0.0) > 0:
            assert after == {**before, "alpha_cos": 0.25}, name
        else:
            assert after == before, name


def test_kd_positions_changes_only_the_cache_positions() -> None:
    from distil.quality.ablation import logits_config

    base = logits_config(parse([]), "p", "t").model_dump()
    exp = logits_config(parse(["--kd-positions", "all"]), "p", "t").model_dump()
    assert base["kd_positions"] == "masked" and exp["kd_positions"] == "all"
    assert {k: v for k, v in exp.items() if k != "kd_positions"} == {
        k: v for k, v in base.items() if k != "kd_positions"
    }
