"""The quality table behind ``scripts/quality.py``: which distillation buys what.

Rows (``distil.quality.config.ROWS``; default ``DEFAULT_ROWS``): the teacher; general + task
distillation (the full recipe); general only (the recipe before task distillation); task only;
no distillation (the student initialised from every other teacher layer and fine-tuned on the
labels); and, on request, the general distillation's own ablation (no cosine, MLM only, random
init). Every row uses the same MLM teacher, teacher cache, seed, distillation budget and
fine-tune settings (early stopping on the in-domain validation split, the same most steps for
every student), and each is scored the same way: top-1 agreement and coarsened KL to the MLM
teacher on the cache's held-out split (``distil.quality.eval.evaluate_mlm``), and sentiment
metrics on the in-domain validation split and on the evaluation sets no model trains on in any
form (``--out-of-domain``, ``--unseen``: kept out of every training, validation and pool row by
normalised text), with the share of the teacher's accuracy kept.

In-process, no Ray and no cluster: the engine-free library steps the stages' jobs wrap
(``prepare.run_serial``, ``teacher.adapt``, ``teacher.build.build_in_process``,
``DistilRecipe``, ``sentiment.finetune.run_local``); the two Beam stages (``distil pool``
labelling the task pool, ``distil score`` for the int8 check) are handed in by the caller
(``Stages``), since a library does not import the engines. Each artifact is committed under
``cfg.work`` at a name fingerprinting what made it, so a rerun reuses finished rows, the pool and
its labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from distil import storage
from distil.config import resolve_config_path
from distil.quality.config import ROWS, QualityConfig, RowSpec
from distil.quality.table import summarize

log = logging.getLogger("distil.quality.ablation")
ROW_KIND = "quality_row"


# one budgets file per ``--budget``, shared with ``distil demo --scale``: the GPU ablation and the
# GPU demo adapt, prepare and cache with the same settings, so their figures are comparable
BUDGET_SCALES = {"cpu": "demo/sample", "gpu": "demo/full"}


def demo_budgets(threads: int = 0, budget: str = "cpu") -> dict[str, Any]:
    """The demo's scale for ``budget``: what ``--prepared``/``--teacher`` default to is built
    with it (``threads`` > 0 replaces its torch thread counts: 2 threads on 2 busy cores crawl)."""
    budgets = yaml.safe_load(resolve_config_path(BUDGET_SCALES[budget]).read_text())
    if threads:
        for stage in ("adapt", "logits"):
            budgets[stage]["torch_threads"] = threads
    return budgets


# ----------------------------------------------------------------------------------- inputs
def prepare_inputs(cfg: QualityConfig) -> tuple[str, str, str]:
    """(prepared shards, teacher, reviews dir): given ones as they are, else built as the demo
    builds them (sample corpus parts, prepare and adapt budgets of ``demo/sample``)."""
    from distil.data.config import PrepareConfig
    from distil.data.prepare_ranges import run_serial
    from distil.samples.config import SamplesConfig
    from distil.samples.corpus import run as build_samples

    budgets = demo_budgets(cfg.threads, cfg.budget)
    reviews = storage.join(cfg.samples, "reviews")
    if cfg.prepared is None or not storage.is_committed(reviews):
        build_samples(SamplesConfig(output=cfg.samples))  # reuses what is committed
    prepared = cfg.prepared
    if prepared is None:
        corpus = storage.join(cfg.samples, "corpus")
        args = {k: v for k, v in budgets["prepare"].items() if k != "num_workers"}
        args["input"] = [storage.join(corpus, p) for p in budgets.get("corpus") or [""]]
        prepared = storage.join(cfg.work, "prepared-" + storage.fingerprint(args))
        if not storage.is_committed(prepared):
            log.info("preparing %s", prepared)
            run_serial(PrepareConfig(**args, output=prepared))
    teacher = cfg.teacher
    if teacher is None:
        from distil.teacher.adapt import adapt
        from distil.teacher.config import AdaptConfig

        teacher = storage.join(cfg.work, "teacher-adapted")
        # adapt itself skips a committed output made from the same teacher, data and settings
        adapt(AdaptConfig(**budgets["adapt"], input=prepared, output=teacher))
    return prepared, teacher, reviews


def build_cache(
    cfg: QualityConfig, prepared: str, teacher: str, sha256: str, hidden_size: int
) -> str:
    """The teacher cache every row learns from and is scored on (demo's sample logits budget,
    ``cfg.seed``, with the hidden-state sketch the cosine rows need); it serves T = 1 and 2 (the
    logits default) whatever ``cfg.temperature`` is, so every temperature shares one cache."""
    from distil.teacher.build import build_in_process, plan_cache

    lc = logits_config(cfg, prepared, teacher)
    plan = plan_cache(lc, sha256, hidden_size)
    if not plan.committed:
        log.info("building the teacher cache %s", plan.url)
        build_in_process(plan, lc)
    return plan.url


def logits_config(cfg: QualityConfig, prepared: str, teacher: str) -> Any:
    """The cache's ``LogitsConfig``: the budget file's logits section, this run's seed, sketch and
    KD positions (``--kd-positions all``: issue 22's experiment; the plan fingerprints it, so the
    rows distilled from it get their own cache and results)."""
    from distil.teacher.config import LogitsConfig

    fields = LogitsConfig.model_fields
    args = {k: v for k, v in demo_budgets(cfg.threads, cfg.budget)["logits"].items() if k in fields}
    args.update(seed=cfg.seed, kd_temperatures=sorted({1.0, 2.0, cfg.temperature}))
    args.update(hidden_sketch_dims=cfg.sketch_dims, kd_positions=cfg.kd_positions)
    return LogitsConfig(
        **args, input=prepared, teacher=teacher, cache_root=storage.join(cfg.work, "cache")
    )


# ------------------------------------------------------------------------------------- rows
def _save_student(model: Any, tokenizer: Any, url: str, metrics: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="distil-quality-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        files = sorted(os.listdir(tmp))
        storage.upload_dir(tmp, url)
    storage.commit(url, {"kind": "student", "files": files, "metrics": metrics})


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite ``model``'s weights in place with a fresh ``from config`` init (same parameter
    objects, so an optimizer built on them stays valid)."""
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    model.load_state_dict(fresh.state_dict())


def row_alphas(cfg: QualityConfig, spec: RowSpec) -> dict[str, float]:
    """The row's loss weights; ``--cos-weight`` (issue 22's cosine experiment) replaces the
    cosine weight only in rows that use the cosine loss, so no-cos and mlm-only stay as they are."""
    alphas = dict(spec.alphas or {})
    if cfg.cos_weight is not None and alphas.get("alpha_cos", 0.0) > 0:
        alphas["alpha_cos"] = cfg.cos_weight
    return alphas


def distil_student(
    cfg: QualityConfig, spec: RowSpec, cache: str, teacher: str, url: str
) -> dict[str, Any]:
    """Distil one student in this process (world size 1) and commit it at ``url``."""
    from distil.train.config import DistilConfig
    from distil.train.recipe import DistilRecipe

    with tempfile.TemporaryDirectory(prefix="distil-quality-run-") as tmp:
        dc = DistilConfig(
            mode="cached",
            cache=cache,
            teacher=teacher,
            output=os.path.join(tmp, "out"),
            storage_path=os.path.join(tmp, "runs"),
            student_layers=cfg.student_layers,
            temperature=cfg.temperature,
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            warmup_steps=int(cfg.warmup_fraction * cfg.steps),
            seed=cfg.seed,
            heldout_fraction=cfg.heldout_fraction,
            eval_every=cfg.steps,
            eval_batches=1,
            log_every=max(1, cfg.steps // 10),
            num_workers=1,
            **row_alphas(cfg, spec),
        )
        recipe = DistilRecipe(dc, work_dir=tmp, device=cfg.device)
        recipe.setup(None)
        if spec.init == "random":
            randomize(recipe.student, cfg.seed)
        metrics = recipe.train()
    metrics = {k: v for k, v in metrics.items() if k not in ("eval_history", "train_history")}
    _save_student(recipe.student, recipe.tokenizer, url, metrics)
    return metrics


def undistilled_student(cfg: QualityConfig, teacher: str, url: str) -> dict[str, Any]:
    """The student the recipe starts from (every other teacher layer), committed at ``url``."""
    from distil.student.model import build_student
    from distil.teacher.load import load_teacher

    t = load_teacher(teacher, require_mlm_head=True)
    student = build_student(t.model, cfg.student_layers)
    metrics = {"student_layers": student.config.num_hidden_layers, "steps": 0}
    _save_student(student, t.tokenizer, url, metrics)
    return metrics


@dataclass(frozen=True)
class Stages:
    """The Beam stages the table needs, handed in by the entry point (``scripts/quality.py``):
    ``pool`` labels the task pool (``distil.pipelines.task_pool.run``), ``score`` scores a file
    (``distil.pipelines.score_reviews.run``) for the int8 check."""

    pool: Callable[[Any], dict[str, Any]] | None = None
    score: Callable[[Any], dict[str, Any]] | None = None


def finetune_config(cfg: QualityConfig, ctx: dict[str, Any], model: str, row_url: str, **kw: Any):
    """The fine-tune every row shares: in-domain labels, evaluation sets excluded, early stopping
    on the validation split, length buckets; ``kw`` sets what differs (lr, epochs, pool, cache)."""
    from distil.sentiment.config import FinetuneConfig

    return FinetuneConfig(
        model=model,
        train=ctx["files"][cfg.in_domain],
        exclude=ctx["excluded"],
        output=row_url,
        run_name="classifier",
        latest_pointer=storage.join(row_url, "classifier-latest.json"),
        batch_size=cfg.finetune_batch_size,
        max_length=cfg.finetune_max_length,
        eval_every=cfg.eval_every,
        early_stopping_patience=cfg.patience,
        length_buckets=True,
        seed=cfg.seed,
        torch_threads=cfg.threads or None,
        **kw,
    )


def finetune(cfg: QualityConfig, fc: Any) -> str:
    """Fine-tune in this process unless committed; the classifier URL."""
    from distil.sentiment.finetune import run_local

    url = storage.join(fc.output, "classifier")
    if storage.is_committed(url):
        return url
    return run_local(fc, device=cfg.device)["model_url"]


def student_budget(cfg: QualityConfig, train_rows: int, pool_rows: int) -> int:
    """The most fine-tune steps every student gets: ``pool_epochs`` over labelled + pool rows
    when a row is task-distilled, else ``finetune_epochs`` over the labelled rows — whichever is
    more, so a row without the pool is never cut shorter than one with it (early stopping ends
    each where its validation accuracy stops rising)."""
    bs = cfg.finetune_batch_size
    steps = math.ceil(cfg.finetune_epochs * train_rows / bs)
    if any(ROWS[r].task for r in cfg.rows):
        steps = max(steps, math.ceil(cfg.pool_epochs * (train_rows + pool_rows) / bs))
    return min(steps, cfg.finetune_steps) if cfg.finetune_steps else steps


def student_fingerprint(cfg: QualityConfig, spec: RowSpec, inputs: dict[str, Any]) -> str:
    """What a row's student (before fine-tuning) depends on: its init, losses and the
    distillation budget. Rows whose students agree share one (``full`` and ``general-only``
    share their general distillation; ``task-only`` and ``no-distil`` their undistilled start)."""
    keys = ["seed", "student_layers", "heldout_fraction"]
    if spec.alphas is not None:
        keys += ["steps", "batch_size", "lr", "warmup_fraction", "temperature"]
    what = {"init": spec.init, "alphas": row_alphas(cfg, spec) if spec.alphas else None}
    teacher = {k: inputs[k] for k in ("teacher", "cache")}
    return storage.fingerprint({**what, "cfg": cfg.model_dump(include=set(keys)), **teacher})


def row_fingerprint(cfg: QualityConfig, name: str, inputs: dict[str, Any]) -> str:
    """What a row's result depends on: its spec, the shared budgets it uses and its inputs."""
    spec = ROWS[name]
    keys = ["seed", "finetune_batch_size", "finetune_max_length", "eval_every", "patience"]
    keys += ["in_domain", "out_of_domain", "unseen"]
    if spec.init == "teacher":
        keys += ["teacher_lr", "teacher_epochs", "sentiment_teacher"]
    else:
        keys += ["student_layers", "heldout_fraction", "finetune_lr"]
    if spec.alphas is not None:
        keys += ["steps", "batch_size", "lr", "warmup_fraction"]
        if spec.alphas.get("alpha_ce", 0.0) > 0:  # T only enters through the KD term
            keys.append("temperature")
    if spec.task:
        keys += ["kd_alpha", "kd_temperature"]
    # only when set, so rows committed before the flag existed keep their fingerprints
    if cfg.cos_weight is not None and (spec.alphas or {}).get("alpha_cos", 0.0) > 0:
        keys.append("cos_weight")
    settings = cfg.model_dump(include=set(keys))
    return storage.fingerprint({"row": name, "spec": repr(spec), "cfg": settings, **inputs})


def run_row(cfg: QualityConfig, name: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """One row, reused when committed: student (distilled or not), classifier, scores."""
    from distil.quality.eval import evaluate_mlm

    spec = ROWS[name]
    inputs: dict[str, Any] = {"teacher": ctx["teacher_sha256"], "cache": ctx["cache"]}
    if spec.init != "teacher":
        inputs["max_steps"] = ctx["max_steps"]
    if spec.task:
        inputs["task_cache"] = ctx["task"]["teacher_cache"]
    url = storage.join(cfg.work, "rows", f"{name}-{row_fingerprint(cfg, name, inputs)}")
    if storage.is_committed(url):
        log.info("row %s: reusing %s", name, url)
        return storage.read_manifest(url)["result"]
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, distil_metrics = cfg.sentiment_teacher or ctx["teacher"], None
    if spec.init != "teacher":
        kind = "distilled" if spec.alphas is not None else "undistilled"
        model = storage.join(
            cfg.work, "students", f"{kind}-{student_fingerprint(cfg, spec, inputs)}"
        )
        if not storage.is_committed(model):
            if spec.alphas is None:
                undistilled_student(cfg, ctx["teacher"], model)
            else:
                distil_student(cfg, spec, ctx["cache"], ctx["teacher"], model)
        distil_metrics = storage.read_manifest(model)["metrics"]
    t_distil = time.perf_counter() - t0
    if spec.init == "teacher":
        fc = finetune_config(cfg, ctx, model, url, lr=cfg.teacher_lr, epochs=cfg.teacher_epochs)
    else:
        kw: dict[str, Any] = {"lr": cfg.finetune_lr, "epochs": 1e6, "max_steps": ctx["max_steps"]}
        if spec.task:
            task = ctx["task"]
            kw.update(
                teacher_cache=task["teacher_cache"],
                pool=[task["pool"]] if task["pool_rows"] else [],
                kd_alpha=cfg.kd_alpha,
                kd_temperature=cfg.kd_temperature,
            )
        fc = finetune_config(cfg, ctx, model, url, **kw)
    clf = finetune(cfg, fc)
    t_ft = time.perf_counter() - t0 - t_distil
    scores = score_sets(cfg, ctx, name, clf)
    if spec.init == "teacher":  # the reference: agrees with itself, no divergence
        mlm = {"top1_agreement": 1.0, "kl_coarse": 0.0, "positions": None, "by_definition": True}
    else:
        mlm = evaluate_mlm(
            ctx["teacher"],
            model,
            ctx["cache"],
            heldout_fraction=cfg.heldout_fraction,
            batch_size=cfg.eval_batch_size,
        )
    ft = json.loads(storage.read_bytes(storage.join(clf, "metrics.json")))
    result = {
        "row": name,
        "what": spec.what,
        "alphas": spec.alphas,
        "init": spec.init,
        "task": spec.task,
        "model": model,
        "classifier": clf,
        "mlm": mlm,
        "sets": scores,
        "accuracy": {k: v["accuracy"] for k, v in scores.items()},
        "rows_scored": {k: v["rows"] for k, v in scores.items()},
        "finetune": {
            "selection": {k: v for k, v in ft["selection"].items() if k != "evaluations"},
            "curve": [[e["step"], e["accuracy"]] for e in ft["selection"]["evaluations"]],
            "train_examples": ft["train_examples"],
            "pool_examples": ft["pool_examples"],
            "train_seconds": ft["train_seconds"],
            "data": ft["data"],
        },
        "distil": distil_metrics,
        "seconds": {
            "distil": round(t_distil, 1),
            "finetune": round(t_ft, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    storage.commit(url, {"kind": ROW_KIND, "result": result})
    log.info("row %s done in %.0fs", name, result["seconds"]["total"])
    return result


def score_sets(cfg: QualityConfig, ctx: dict[str, Any], name: str, clf: str) -> dict[str, Any]:
    """The classifier's metrics on every evaluation set (in domain: the validation split)."""
    from distil.quality.eval import evaluate_sentiment

    return evaluate_sentiment(
        {name: clf},
        ctx["files"],
        {cfg.in_domain: "validation"},  # every other set: all of it
        cache_dir=storage.join(cfg.work, "models"),
        max_length=cfg.finetune_max_length,
    )[name]


def evaluation_sets(cfg: QualityConfig, reviews: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``{set name: URL}`` of the sets the table scores, and what was done to build them: the
    in-domain file, the out-of-domain file, and the ``--unseen`` file without its rows that are
    in-domain texts (normalised-text match), written under ``WORK/eval``."""
    from distil.quality.eval import review_sets
    from distil.samples.reviews import unseen_reviews

    files = review_sets(reviews, cfg.in_domain, cfg.out_of_domain)
    notes: dict[str, Any] = {}
    if cfg.unseen:
        if cfg.unseen in (cfg.in_domain, cfg.out_of_domain):
            raise ValueError(f"--unseen {cfg.unseen} is already one of the other sets")
        name = cfg.unseen.removesuffix(".jsonl") + "_unseen.jsonl"
        built = unseen_reviews(
            storage.join(reviews, cfg.unseen),
            files[cfg.in_domain],
            storage.join(cfg.work, "eval"),
            name,
        )
        files[name] = built["url"]
        notes[name] = {"source": cfg.unseen, **built}
    return files, notes


def task_inputs(
    cfg: QualityConfig, ctx: dict[str, Any], teacher_clf: str, stages: Stages
) -> dict[str, Any]:
    """The task pool and its teacher logits (``distil pool``: built and labelled once, reused by
    every rerun), made from the same training rows every fine-tune trains on."""
    from distil.sentiment.config import PoolConfig

    if stages.pool is None:
        raise ValueError("rows with task distillation need the pool stage (run scripts/quality.py)")
    pc = PoolConfig(
        train=ctx["files"][cfg.in_domain],
        exclude=ctx["excluded"],
        teacher=teacher_clf,
        output=storage.join(cfg.work, "task"),
        multiple=cfg.pool_multiple,
        methods=cfg.pool_methods,
        replace_prob=cfg.replace_prob,
        seed=cfg.seed,
        max_length=cfg.finetune_max_length,
        torch_threads=cfg.threads or None,
    )
    return stages.pool(pc)


def int8_check(cfg: QualityConfig, ctx: dict[str, Any], clf: str, stages: Stages) -> dict[str, Any]:
    """The classifier scored by ``distil score`` on the in-domain validation split, fp32 and
    ``--quantize`` (int8): the two accuracies and their difference."""
    from distil.score.config import ScoreConfig
    from distil.score.scored import read_run
    from distil.sentiment.classifier import INT8_SCHEME

    val = storage.join(cfg.work, "eval", "validation.jsonl")
    rows = [
        json.loads(line)
        for line in storage.read_bytes(ctx["files"][cfg.in_domain]).splitlines()
        if line.strip()
    ]
    gold = {r["id"]: r["label"] for r in rows if r.get("split") == "validation"}
    storage.write_bytes(
        val, "".join(json.dumps(r) + "\n" for r in rows if r["id"] in gold).encode()
    )
    out: dict[str, Any] = {}
    for mode, quantize in (("fp32", False), ("int8", True)):
        scheme = INT8_SCHEME if quantize else None
        output = storage.join(cfg.work, "score", storage.fingerprint([clf, mode, scheme]))
        stages.score(
            ScoreConfig(
                input=[val],
                model=clf,
                output=output,
                run_id=mode,
                quantize=quantize,
                max_length=cfg.finetune_max_length,
                torch_threads=cfg.threads or None,
            )
        )
        scored = read_run(output, mode).to_pylist()
        hits = [gold[r["id"]] == r["label_id"] for r in scored]
        out[mode] = {"accuracy": sum(hits) / len(hits), "rows": len(hits)}
    out["difference"] = out["int8"]["accuracy"] - out["fp32"]["accuracy"]
    return out


def shared_inputs(cfg: QualityConfig) -> dict[str, str]:
    """What every row shares: prepared shards, teacher (and its weights hash), the teacher cache
    and the reviews dir (``scripts/experiments/kd_temperature.py`` distils from the same ones)."""
    from distil.teacher.load import load_teacher

    prepared, teacher, reviews = prepare_inputs(cfg)
    loaded = load_teacher(teacher, require_mlm_head=True)
    sha = loaded.weights_sha256
    cache = build_cache(cfg, prepared, teacher, sha, loaded.model.config.hidden_size)
    return {
        "prepared": prepared,
        "teacher": teacher,
        "teacher_sha256": sha,
        "cache": cache,
        "reviews": reviews,
    }


def apply_budget(cfg: QualityConfig) -> QualityConfig:
    """``cfg`` with its budget file's ``quality`` section filled in under what the user set
    explicitly (a flag beats the file, the file beats the CPU defaults)."""
    section = demo_budgets(budget=cfg.budget).get("quality") or {}
    unknown = sorted(set(section) - set(QualityConfig.model_fields))
    if unknown:
        raise ValueError(f"{BUDGET_SCALES[cfg.budget]}: unknown quality keys {unknown}")
    update = {k: v for k, v in section.items() if k not in cfg.model_fields_set}
    return QualityConfig(**{**cfg.model_dump(exclude_unset=True), **update})


def _context(cfg: QualityConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What every row shares (inputs, evaluation sets, what is kept out of training) and the
    notes on how the evaluation sets were built."""
    from distil.sentiment.config import FinetuneConfig
    from distil.sentiment.labelled_data import assemble

    shared = shared_inputs(cfg)
    files, eval_notes = evaluation_sets(cfg, shared["reviews"])
    # every set but the in-domain one is kept out of every training, validation and pool row
    excluded = [url for name, url in files.items() if name != cfg.in_domain]
    in_domain = files[cfg.in_domain]
    data = assemble(
        FinetuneConfig(model="-", train=in_domain, output="-", exclude=excluded), in_domain
    )
    ctx = {**shared, "files": files, "excluded": excluded, "train_rows": len(data.train)}
    return ctx, eval_notes


def _with_task(cfg: QualityConfig, ctx: dict[str, Any], teacher_clf: str, stages: Stages) -> dict:
    """``ctx`` with the task pool of ``cfg.pool_multiple`` and the students' most steps."""
    task = None
    if any(ROWS[r].task for r in cfg.rows):
        task = task_inputs(cfg, ctx, teacher_clf, stages)
    n_pool = task["pool_rows"] if task else 0
    return {**ctx, "task": task, "max_steps": student_budget(cfg, ctx["train_rows"], n_pool)}


def run(cfg: QualityConfig, stages: Stages | None = None) -> dict[str, Any]:
    """Every row of ``cfg.rows`` (the teacher first); the summary with the table and goals.
    With ``cfg.curve``, the curve instead (:func:`run_curve`)."""
    cfg = apply_budget(cfg)
    stages = stages or Stages()
    if cfg.curve:
        return run_curve(cfg, stages)
    t0 = time.perf_counter()
    ctx, eval_notes = _context(cfg)
    prepared, teacher, cache, reviews = (
        ctx[k] for k in ("prepared", "teacher", "cache", "reviews")
    )
    files, excluded = ctx["files"], ctx["excluded"]
    t_inputs = time.perf_counter() - t0
    results = {"teacher": run_row(cfg, "teacher", ctx)}
    ctx = _with_task(cfg, ctx, results["teacher"]["classifier"], stages)
    results |= {name: run_row(cfg, name, ctx) for name in cfg.rows if name != "teacher"}
    int8 = None
    if stages.score is not None and "full" in results:
        int8 = int8_check(cfg, ctx, results["full"]["classifier"], stages)
    out = summarize(results, list(files), cfg.in_domain, cfg.out_of_domain, int8)
    out.update(
        config=cfg.model_dump(),
        inputs={
            "prepared": prepared,
            "teacher": teacher,
            "cache": cache,
            "reviews": reviews,
            "evaluation_sets": files,
            "excluded_from_training": excluded,
            "task": ctx["task"],
            "student_max_steps": ctx["max_steps"],
        },
        evaluation_notes=eval_notes,
        seconds={"inputs": round(t_inputs, 1), "total": round(time.perf_counter() - t0, 1)},
    )
    storage.write_json(cfg.out or storage.join(cfg.work, "quality.json"), out)
    return out


def run_curve(cfg: QualityConfig, stages: Stages) -> dict[str, Any]:
    """The full recipe's share of the teacher against the task pool's size: one ``full`` row per
    ``cfg.curve`` multiple (0: the labelled rows alone), each with the table's settings (the same
    rows, teacher and budget rule, so the table's own pool size reuses its row). Writes
    ``WORK/curve.json`` and ``WORK/curve.png`` (shares with ±1 standard error bars)."""
    t0 = time.perf_counter()
    cfg = cfg.model_copy(update={"rows": ["teacher", "full"]})
    ctx, _ = _context(cfg)
    teacher = run_row(cfg, "teacher", ctx)
    points = []
    for multiple in cfg.curve:
        cm = cfg.model_copy(update={"pool_multiple": multiple, "curve": []})
        cx = _with_task(cm, ctx, teacher["classifier"], stages)
        row = run_row(cm, "full", cx)
        point: dict[str, Any] = {
            "multiple": multiple,
            "pool_rows": cx["task"]["pool_rows"],
            "max_steps": cx["max_steps"],
            "steps_trained": row["finetune"]["selection"]["steps_trained"],
            "seconds": row["seconds"]["total"],
        }
        for name, m in row["sets"].items():
            t = teacher["sets"][name]["accuracy"]
            point[name] = {
                "accuracy": m["accuracy"],
                "share": m["accuracy"] / t,
                "share_se": m["accuracy_se"] / t,  # the teacher's accuracy taken as fixed
            }
        points.append(point)
    sets = list(ctx["files"])
    out = {
        "curve": points,
        "teacher": {s: teacher["sets"][s]["accuracy"] for s in sets},
        "table": curve_markdown(points, sets),
        "config": cfg.model_dump(),
        "seconds": {"total": round(time.perf_counter() - t0, 1)},
    }
    png = curve_png(points, [cfg.in_domain, cfg.out_of_domain])
    storage.write_bytes(storage.join(cfg.work, "curve.png"), png)
    out["png"] = storage.join(cfg.work, "curve.png")
    storage.write_json(cfg.out or storage.join(cfg.work, "curve.json"), out)
    return out


def curve_markdown(points: list[dict[str, Any]], sets: list[str]) -> str:
    head = ["pool (× training rows)", "pool rows", "steps"]
    head += [f"{s.removesuffix('.jsonl')} share ± SE" for s in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [f"{p['multiple']:g}", f"{p['pool_rows']:,}", f"{p['steps_trained']}"]
        cells += [f"{p[s]['share']:.3f} ± {p[s]['share_se']:.3f}" for s in sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_png(points: list[dict[str, Any]], sets: list[str]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = list(range(len(points)))
    for s in sets:
        ax.errorbar(
            xs,
            [p[s]["share"] for p in points],
            yerr=[p[s]["share_se"] for p in points],
            marker="o",
            capsize=3,
            label=s.removesuffix(".jsonl").replace("_", " "),
        )
    ax.set_xticks(xs, [f"{p['multiple']:g}×" for p in points])
    ax.set_xlabel("task pool size (multiples of the training split)")
    ax.set_ylabel("student accuracy / teacher's")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
