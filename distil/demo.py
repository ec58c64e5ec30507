"""``distil demo``: the whole pipeline on the embedded default, through the same entry points a
cluster uses — ``ray job submit`` for the Ray stages, the Beam pipeline for scoring — with every
artifact on the local stack's S3.

The demo is a plain list of steps. Each step's output URL carries a fingerprint of its arguments
and of its inputs' fingerprints, and each finished step leaves a small record
(``ROOT/steps/<name>-<fp>.json``): a rerun finds the record and the committed output and reuses
it; a run killed mid-step resumes that step (every job itself skips committed shards and resumes
from its last checkpoint; a still-running Ray job for the same step is attached to, not
duplicated). Stage budgets per scale live in ``configs/demo/<scale>.yaml``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from distil import storage
from distil.config import RESULT_PREFIX, StageConfig

REPO = Path(__file__).resolve().parents[1]


class DemoConfig(StageConfig):
    scale: Literal["tiny", "sample", "full"] = Field(
        "sample",
        description="stage budgets: tiny (a minute-scale smoke run), sample (the default, "
        "<= 20 min on 2 CPU cores), full (bigger budgets for a GPU box)",
    )
    root: str = Field("s3://distil/demo", description="URL under which every artifact goes")
    samples: str = Field(
        "s3://distil/samples", description="URL of the sample corpus + reviews (built if missing)"
    )
    ray_address: str | None = Field(
        "http://127.0.0.1:8265",
        description="Ray job API to submit the Ray stages to; empty runs each job as a local "
        "process with an embedded Ray",
    )
    start_stack: bool = Field(
        True, description="start the local stack (Ray head + SeaweedFS) if it is not running"
    )
    report_dir: str = Field("runs", description="local folder that gets a copy of the report")
    budgets: str | None = Field(
        None, description="YAML with per-stage settings (default: configs/demo/<scale>.yaml)"
    )


@dataclass
class Step:
    name: str
    argv: list[str]  # the command, as a user would type it after `ray job submit --`
    engine: Literal["ray", "beam"]
    output: str  # committed (manifest.json) when the step is done
    fingerprint: str
    reused: bool = False
    wall_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)


def flags(args: dict[str, Any]) -> list[str]:
    """``{"seq_len": 128, "input": [a, b]}`` -> ``["--seq-len", "128", "--input", "[a, b]"]``."""
    out: list[str] = []
    for k, v in args.items():
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, (list, dict)):
            out += [flag, json.dumps(v)]
        else:
            out += [flag, str(v)]
    return out


def parse_result(logs: str) -> dict[str, Any]:
    """The last ``DISTIL_RESULT {...}`` line a job printed (every job prints one at the end)."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError("the job printed no DISTIL_RESULT line")


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.run_url = storage.join(cfg.root, cfg.scale)
        path = cfg.budgets or REPO / "configs" / "demo" / f"{cfg.scale}.yaml"
        self.budgets: dict[str, dict[str, Any]] = yaml.safe_load(Path(path).read_text())
        self.steps: dict[str, Step] = {}
        self.env = {
            k: os.environ[k]
            for k in (
                "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_REGION",
                "DISTIL_HOME",
            )
            if k in os.environ
        }
        self.env.setdefault("DISTIL_HOME", str(Path(".distil").resolve()))
        self.env["TOKENIZERS_PARALLELISM"] = "false"

    # -- running one step -------------------------------------------------------------------
    def _record_url(self, name: str, fp: str) -> str:
        return storage.join(self.run_url, "steps", f"{name}-{fp}.json")

    def step(
        self,
        name: str,
        script: str,
        args: dict[str, Any],
        output_arg: str | None,
        engine: Literal["ray", "beam"] = "ray",
        upstream: tuple[Step, ...] = (),
        output_key: str | Callable[[str, dict[str, Any]], str] = "output",
    ) -> Step:
        """Run (or reuse) one stage. ``output_arg`` names the flag that receives this step's
        output URL (derived from the fingerprint); None when the job derives it itself."""
        fp = storage.fingerprint(
            {"script": script, "args": args, "upstream": [u.fingerprint for u in upstream]}
        )
        output = storage.join(self.run_url, f"{name}-{fp}")
        full_args = dict(args)
        if output_arg:
            full_args[output_arg] = output
        argv = ["python", script, *flags(full_args)]
        st = Step(name, argv, engine, output, fp)
        record_url = self._record_url(name, fp)
        record = storage.read_json(record_url) if storage.exists(record_url) else None
        if record and storage.is_committed(record["output"]):
            st.reused, st.result, st.output = True, record["result"], record["output"]
            st.wall_s = record["wall_s"]
            print(f"[demo] {name}: reusing committed output {st.output}", flush=True)
        else:
            print(f"[demo] {name}: running {' '.join(argv)}", flush=True)
            t0 = time.perf_counter()
            logs = self._execute(st)
            st.wall_s = round(time.perf_counter() - t0, 2)
            st.result = parse_result(logs)
            if callable(output_key):
                st.output = output_key(output, st.result)
            else:
                st.output = st.result.get(output_key) or output
            if not storage.is_committed(st.output):
                raise RuntimeError(f"{name} finished but {st.output} has no committed manifest")
            storage.write_json(
                record_url,
                {"output": st.output, "result": st.result, "wall_s": st.wall_s, "argv": argv},
            )
            print(f"[demo] {name}: done in {st.wall_s:.1f}s -> {st.output}", flush=True)
        self.steps[name] = st
        return st

    def _execute(self, st: Step) -> str:
        if st.engine == "ray" and self.cfg.ray_address:
            from distil.submit import submit_ray_job

            _, logs = submit_ray_job(
                self.cfg.ray_address,
                st.argv,
                working_dir=REPO,
                env_vars=self.env,
                step_key=f"{self.run_url}/{st.name}-{st.fingerprint}",
            )
            return logs
        env = dict(os.environ, **self.env, PYTHONPATH=str(REPO))
        env.pop("RAY_ADDRESS", None)
        argv = [sys.executable, *st.argv[1:]]
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        if proc.wait() != 0:
            raise RuntimeError(f"{st.name} failed with exit code {proc.returncode}")
        return "".join(lines)

    # -- the plan -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        b = self.budgets
        samples = self._samples()
        corpus = storage.join(self.cfg.samples, "corpus")
        reviews = storage.join(self.cfg.samples, "reviews")

        # which parts of the sample corpus this scale trains on (all of it unless listed)
        parts = b.get("corpus") or [""]
        inputs = [storage.join(corpus, p) if p else corpus for p in parts]
        prepared = self.step(
            "prepare", "jobs/prepare.py", {**b["prepare"], "input": inputs}, "output"
        )
        teacher = self.step(
            "adapt_teacher",
            "jobs/adapt_teacher.py",
            {**b["adapt"], "input": prepared.output},
            "output",
            upstream=(prepared,),
        )
        cache = self.step(
            "logits",
            "jobs/teacher_logits.py",
            {
                **b["logits"],
                "input": prepared.output,
                "teacher": teacher.output,
                "cache_root": storage.join(self.cfg.root, "cache"),
            },
            None,
            upstream=(prepared, teacher),
            output_key="cache_url",
        )
        run_name = "distil-" + storage.fingerprint([b["distil"], cache.fingerprint])
        student = self.step(
            "distil",
            "jobs/distil.py",
            {
                **b["distil"],
                "cache": cache.output,
                "teacher": teacher.output,
                "storage_path": storage.join(self.run_url, "train"),
                "run_name": run_name,
            },
            "output",
            upstream=(cache, teacher),
        )
        movie = storage.join(reviews, "movie_snippets.jsonl")
        task_cache = storage.join(self.run_url, "task-teacher-logits-" + teacher.fingerprint)
        clf_teacher = self.step(
            "finetune_teacher",
            "jobs/finetune.py",
            {
                **b["finetune"],
                "model": teacher.output,
                "train": movie,
                "run_name": "model",
                "write_teacher_cache": task_cache,
                "latest_pointer": storage.join(self.run_url, "teacher-classifier-latest.json"),
            },
            "output",
            upstream=(teacher,),
            output_key="model_url",
        )
        latest = storage.join(self.run_url, "models", "latest.json")
        clf_student = self.step(
            "finetune_student",
            "jobs/finetune.py",
            {
                **b["finetune"],
                "model": student.output,
                "train": movie,
                "run_name": "model",
                "teacher_cache": clf_teacher.result["teacher_cache"],
                "latest_pointer": latest,
            },
            "output",
            upstream=(student, clf_teacher),
            output_key="model_url",
        )
        run_id = "demo-" + storage.fingerprint(
            [b["score"], b.get("score_inputs"), clf_student.fingerprint]
        )
        names = b.get("score_inputs") or [
            "movie_snippets.jsonl",
            "amazon_snippets.jsonl",
            "rotten_tomatoes.jsonl",
        ]
        inputs = [storage.join(reviews, n) for n in names]
        scored = self.step(
            "score",
            "pipelines/score_reviews.py",
            {
                **b["score"],
                "input": inputs,
                "model": latest,
                "run_id": run_id,
                "teacher_cache": clf_teacher.result["teacher_cache"],
                "runner": "FnApiRunner",
            },
            "output",
            engine="beam",
            upstream=(clf_student, clf_teacher),
            output_key=lambda out, _: scored_run_dir(out, run_id),
        )
        run = self._run_json(started, time.perf_counter() - t0, samples)
        storage.write_json(storage.join(self.run_url, "run.json"), run)
        from distil.report import build_report

        local = str(Path(self.cfg.report_dir, self.cfg.scale).resolve())
        report_url = build_report(self.run_url, local_copy=local)
        del scored
        return {
            "run_json": storage.join(self.run_url, "run.json"),
            "report": report_url,
            "local_report": os.path.join(local, "report.html"),
            "wall_s": run["wall_s"],
            "reused": [k for k, v in self.steps.items() if v.reused],
        }

    def _samples(self) -> dict[str, Any]:
        from distil.data.config import SamplesConfig
        from distil.data.samples import run as build_samples

        t0 = time.perf_counter()
        summary = build_samples(SamplesConfig(output=self.cfg.samples))
        reused = bool(summary["corpus"]["reused"])
        verb = "reusing committed" if reused else "built"
        print(f"[demo] samples: {verb} {self.cfg.samples}", flush=True)
        return {"summary": summary, "wall_s": round(time.perf_counter() - t0, 2), "reused": reused}

    # -- run.json -------------------------------------------------------------------------
    def _run_json(self, started: str, wall_s: float, samples: dict[str, Any]) -> dict[str, Any]:
        from distil import stack

        s = self.steps
        prep = storage.read_manifest(s["prepare"].output)
        cache = storage.read_manifest(s["logits"].output)
        student_metrics = storage.read_json(storage.join(s["distil"].output, "metrics.json"))
        adapt = storage.read_manifest(s["adapt_teacher"].output)
        clf = {
            k: storage.read_manifest(s[k].output) for k in ("finetune_teacher", "finetune_student")
        }
        score = s["score"].result

        def stage(name: str, metrics: dict[str, Any], throughput: str = "") -> dict[str, Any]:
            st = s[name]
            return {
                "url": st.output,
                "fingerprint": st.fingerprint,
                "wall_s": st.wall_s,
                "reused": st.reused,
                "command": " ".join(st.argv),
                "metrics": metrics,
                "throughput": throughput,
            }

        def per_s(n: float, st: Step) -> str:
            return f"{n / st.wall_s:,.0f}/s" if st.wall_s else ""

        stages = {
            "samples": {
                "url": self.cfg.samples,
                "wall_s": samples["wall_s"],
                "reused": samples["reused"],
                "metrics": {
                    "docs": samples["summary"]["corpus"]["docs"],
                    "words": samples["summary"]["corpus"]["words"],
                },
            },
            "prepare": stage(
                "prepare",
                {k: prep[k] for k in ("rows", "tokens", "padding_fraction") if k in prep},
                per_s(prep["tokens"], s["prepare"]) + " tokens",
            ),
            "adapt_teacher": stage("adapt_teacher", _pick(adapt.get("metrics", adapt), "heldout")),
            "logits": stage(
                "logits",
                {k: cache[k] for k in ("positions", "bytes_per_token", "bytes_per_position")},
                per_s(cache["rows"], s["logits"]) + " sequences",
            ),
            "distil": stage(
                "distil",
                {
                    k: v
                    for k, v in student_metrics.items()
                    if k.startswith("eval_") and k != "eval_history"
                }
                | {"steps": student_metrics["step"]},
                per_s(student_metrics.get("tokens_seen", 0), s["distil"]) + " tokens",
            ),
            "finetune_teacher": stage(
                "finetune_teacher", _pick(clf["finetune_teacher"]["metrics"], "accuracy", "f1")
            ),
            "finetune_student": stage(
                "finetune_student", _pick(clf["finetune_student"]["metrics"], "accuracy", "f1")
            ),
            "score": stage(
                "score",
                {k: score[k] for k in ("rows_in", "scored", "dead_letter") if k in score}
                | {f"teacher_{k}": v for k, v in (score.get("teacher_agreement") or {}).items()},
                per_s(score.get("rows_in", 0), s["score"]) + " reviews",
            ),
        }
        artifacts = {
            "shards": {"url": s["prepare"].output, "fingerprint": prep["fingerprint"]},
            "teacher": {
                "url": s["adapt_teacher"].output,
                "fingerprint": adapt.get("fingerprint", ""),
            },
            "cache": {"url": s["logits"].output, "fingerprint": cache.get("fingerprint", "")},
            "student_mlm": {
                "url": s["distil"].output,
                "fingerprint": storage.read_manifest(s["distil"].output)["fingerprint"],
            },
            "classifier_teacher": {
                "url": s["finetune_teacher"].output,
                "fingerprint": clf["finetune_teacher"]["fingerprint"],
            },
            "classifier_student": {
                "url": s["finetune_student"].output,
                "fingerprint": clf["finetune_student"]["fingerprint"],
            },
            "scored": {"url": s["score"].output, "fingerprint": score.get("model_fingerprint", "")},
            "dead_letter": {"url": s["score"].output + " (dead_letter_files)", "fingerprint": ""},
        }
        curves = {
            "distil": {
                "train_loss": [
                    [h["step"], h["loss"]] for h in student_metrics.get("train_history", [])
                ],
                "eval_kl_to_teacher": [
                    [h["step"], h["eval_kl_to_teacher"]]
                    for h in student_metrics.get("eval_history", [])
                    if "eval_kl_to_teacher" in h
                ],
            }
        }
        return {
            "run_id": Path(self.run_url).name + "-" + storage.fingerprint(artifacts)[:8],
            "scale": self.cfg.scale,
            "started_at": started,
            "wall_s": round(wall_s, 2),
            "stack": {
                "s3_endpoint": os.environ.get("AWS_ENDPOINT_URL", ""),
                "ray_address": self.cfg.ray_address or "embedded",
                "local_stack": stack.status() if self.cfg.start_stack else None,
            },
            "stages": stages,
            "artifacts": artifacts,
            "curves": curves,
            "comparison": compare_models(
                teacher_mlm=s["adapt_teacher"].output,
                student_mlm=s["distil"].output,
                teacher_clf=s["finetune_teacher"].output,
                student_clf=s["finetune_student"].output,
                student_agreement=student_metrics.get("eval_teacher_agreement"),
                reviews=storage.join(self.cfg.samples, "reviews", "amazon_snippets.jsonl"),
            ),
            "scores": score_histogram(s["score"].output, score),
        }


def scored_run_dir(output: str, run_id: str) -> str:
    from distil.sentiment.scored import run_dir

    return run_dir(output, run_id)


def _pick(d: dict[str, Any], *prefixes: str) -> dict[str, Any]:
    return {
        k: v for k, v in d.items() if k.startswith(prefixes) and not isinstance(v, (dict, list))
    }


def _local_model(url: str) -> str:
    from distil.stack import distil_home

    dest = os.path.join(distil_home(), "cache", "demo-models", storage.fingerprint(url))
    return storage.copy_dir_to_local(url, dest)


def _dir_bytes(url: str) -> int:
    fs, path = storage.get_fs(url)
    return sum(fs.size(p) for p in fs.find(path) if p.endswith((".safetensors", ".bin")))


def cpu_latency_ms(model_dir: str, texts: list[str], warmup: int = 5) -> float:
    """Median wall time of one review through tokenizer + model, batch 1, one CPU thread."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.inference_mode():
            for i, text in enumerate(texts):
                t0 = time.perf_counter()
                model(**tok(text, truncation=True, max_length=256, return_tensors="pt"))
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    return times[len(times) // 2]


def compare_models(
    teacher_mlm: str,
    student_mlm: str,
    teacher_clf: str,
    student_clf: str,
    student_agreement: float | None,
    reviews: str,
) -> dict[str, Any]:
    """Teacher vs student, every figure measured now or read from the run's own artifacts."""
    from safetensors import safe_open

    texts = [
        json.loads(line)["text"]
        for line in storage.read_bytes(reviews).decode().splitlines()[:105]
        if line.strip()
    ]
    local = {k: _local_model(u) for k, u in (("teacher", teacher_clf), ("student", student_clf))}

    def params(d: str) -> int:
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118

    acc = {
        k: storage.read_manifest(u)["metrics"]["accuracy"]
        for k, u in (("teacher", teacher_clf), ("student", student_clf))
    }
    rows = [
        ("parameters", params(local["teacher"]), params(local["student"])),
        ("size on disk (MB)", _dir_bytes(teacher_clf) / 1e6, _dir_bytes(student_clf) / 1e6),
        (
            "CPU latency per review (ms, batch 1, 1 thread)",
            cpu_latency_ms(local["teacher"], texts),
            cpu_latency_ms(local["student"], texts),
        ),
        ("MLM top-1 agreement with teacher (held-out)", 1.0, student_agreement),
        ("sentiment accuracy (movie snippets, validation)", acc["teacher"], acc["student"]),
    ]
    out = []
    for metric, t, s in rows:
        ratio = (s / t) if (t and s is not None) else None
        out.append({"metric": metric, "teacher": t, "student": s, "student / teacher": ratio})
    kept = acc["student"] / acc["teacher"] if acc["teacher"] else None
    return {"rows": out, "sentiment_accuracy_kept": kept, "mlm_dirs": [teacher_mlm, student_mlm]}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def score_histogram(run_url: str, summary: dict[str, Any], bins: int = 20) -> dict[str, Any]:
    """Histogram of P(positive) per input file, read back through the run's manifest."""
    import numpy as np
    import pyarrow.parquet as pq

    counts: dict[str, np.ndarray] = {}
    edges = np.linspace(0, 1, bins + 1)
    for url in storage.committed_files(run_url, key="files"):
        fs, path = storage.arrow_filesystem(url)
        t = pq.read_table(path, filesystem=fs, columns=["probs", "source_file"])
        probs = t.column("probs").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
        sources = t.column("source_file").to_pylist()
        for src in sorted(set(sources)):
            mask = np.array([x == src for x in sources])
            name = os.path.basename(src)
            h, _ = np.histogram(probs[mask, -1], bins=edges)
            counts[name] = counts.get(name, np.zeros(bins, int)) + h
    return {
        "histogram": {
            "edges": edges.tolist(),
            "counts": {k: v.tolist() for k, v in counts.items()},
        },
        "rows": int(sum(v.sum() for v in counts.values())),
        "summary": {
            k: summary.get(k) for k in ("rows_in", "scored", "dead_letter", "teacher_agreement")
        },
    }


def run(cfg: DemoConfig) -> dict[str, Any]:
    """``distil demo``: start the stack if needed, run every stage, write run.json + report."""
    from distil import stack

    if cfg.start_stack:
        st = stack.status()
        if not all(v["healthy"] for v in st.values()):
            print("[demo] starting the local stack (Ray head + SeaweedFS on 127.0.0.1)", flush=True)
            st = stack.up()
        os.environ.update({k: v for k, v in stack.env_exports().items() if k.startswith("AWS_")})
    t0 = time.perf_counter()
    out = Demo(cfg).run()
    print(
        f"[demo] finished in {time.perf_counter() - t0:.0f}s; "
        f"reused: {', '.join(out['reused']) or 'nothing'}\n"
        f"[demo] run.json: {out['run_json']}\n"
        f"[demo] report:   {out['report']}\n"
        f"[demo] local copy of the report: {out['local_report']}",
        flush=True,
    )
    return out
