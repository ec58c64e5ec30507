"""Running one pipeline step: the command a user would type, the fingerprint that names its output,
and the record that lets a rerun reuse it.

A step is one stage invocation. Its command is ``python -m <module> --flag value …`` — exactly
what a user types after ``ray job submit --`` — so the pipeline exercises the same entry points a
cluster does, and nothing in it depends on where the repository is: the modules are imported from
the installed package, by the Ray cluster's Python or by this interpreter (``sys.executable``) for
local runs.

Each step's output URL carries a fingerprint of its arguments and of its inputs' fingerprints, and
each finished step leaves a small record (``RUN/steps/<name>-<fp>.json``). A rerun that finds the
record and the committed output reuses it instead of running the stage again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distil import storage
from distil.config import RESULT_PREFIX, RunStopped

Engine = Literal["ray", "beam"]


@dataclass(frozen=True)
class Stage:
    """A stage the pipeline runs: the module behind ``python -m`` and how it executes."""

    module: str
    # The value the step fingerprint has always hashed as "script" (the stage's old path in the
    # repository). Kept verbatim so fingerprints — and with them every output URL and the run.json
    # of earlier demo runs — stay the same, and committed outputs are still found and reused.
    fingerprint_key: str
    engine: Engine = "ray"


STAGES: dict[str, Stage] = {
    "prepare": Stage("distil.jobs.prepare", "jobs/prepare.py"),
    "adapt_teacher": Stage("distil.jobs.adapt_teacher", "jobs/adapt_teacher.py"),
    "teacher_logits": Stage("distil.jobs.teacher_logits", "jobs/teacher_logits.py"),
    "distil": Stage("distil.jobs.distil", "jobs/distil.py"),
    "finetune": Stage("distil.jobs.finetune", "jobs/finetune.py"),
    "task_pool": Stage("distil.pipelines.task_pool", "pipelines/task_pool.py", engine="beam"),
    "promote": Stage("distil.jobs.promote", "jobs/promote.py"),
    "score_reviews": Stage(
        "distil.pipelines.score_reviews", "pipelines/score_reviews.py", engine="beam"
    ),
}

# What a job needs from our environment: S3 endpoint, region and credentials as the standard
# chain reads them (keys + session token, or a profile), the object-storage root, the state dir.
# A local process gets all of it; a Ray job gets all but the credentials (``ray_job_env``).
PASSED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DISTIL_ROOT",
    "DISTIL_HOME",
    # MLflow tracking (``distil.tracking``): the server, experiment and run group, and the
    # credentials (which a Ray job's runtime env never carries: ``ray_job_env``)
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "DISTIL_RUN_GROUP",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


@dataclass
class Step:
    name: str
    argv: list[str]  # the command, as a user would type it after `ray job submit --`
    engine: Engine
    output: str  # committed (manifest.json) when the step is done
    fingerprint: str
    reused: bool = False
    wall_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""  # why the stage was not run (its output is then an input, used as is)


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


def command(stage: str, args: dict[str, Any]) -> list[str]:
    """``python -m <module> --flags…``: what a user types after ``ray job submit --``."""
    return ["python", "-m", STAGES[stage].module, *flags(args)]


def local_argv(argv: list[str]) -> list[str]:
    """The same command for a local process: this interpreter, whose environment has the package
    (``python`` on PATH may be another one)."""
    return [sys.executable, *argv[1:]]


def job_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Variables every job gets (a local process all of them, a Ray job ``ray_job_env`` of them):
    S3 settings and DISTIL_HOME from ``environ`` (DISTIL_HOME defaults to ``./.distil``, as for
    ``distil`` itself)."""
    env = {k: environ[k] for k in PASSED_ENV if k in environ}
    env.setdefault("DISTIL_HOME", str(Path(".distil").resolve()))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def ray_job_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the credentials, for a Ray job's runtime env: Ray keeps the runtime env in the
    job record (``ray job list`` shows it), so the cluster's workers must already hold the
    credentials in their own environment (the local stack's Ray is started with them; on
    Kubernetes a Secret or the node's identity)."""
    from distil.ops.submit import SECRET_ENV

    return {k: v for k, v in env.items() if k not in SECRET_ENV}


class StepFailed(RunStopped):
    """A step's job failed or was stopped; rerunning the chain resumes it."""


class StepNotDone(RunStopped):
    """A step that --from / --only leave out has no committed output for its settings."""


class StepRunner:
    """Runs or reuses the steps of one pipeline run (``run_url``), keeping them by name."""

    def __init__(self, run_url: str, ray_address: str | None, env: dict[str, str]):
        self.run_url = run_url
        self.ray_address = ray_address
        self.env = env
        self.steps: dict[str, Step] = {}

    def record_url(self, name: str, fp: str) -> str:
        return storage.join(self.run_url, "steps", f"{name}-{fp}.json")

    def plan(
        self,
        name: str,
        stage: str,
        args: dict[str, Any],
        output_arg: str | None,
        upstream: tuple[Step, ...] = (),
    ) -> Step:
        """The step without running it: fingerprint, output URL and command. ``output_arg`` names
        the flag that receives the output URL; None when the job derives its output itself."""
        spec = STAGES[stage]
        fp = storage.fingerprint(
            {
                "script": spec.fingerprint_key,
                "args": args,
                "upstream": [u.fingerprint for u in upstream],
            }
        )
        output = storage.join(self.run_url, f"{name}-{fp}")
        full_args = dict(args)
        if output_arg:
            full_args[output_arg] = output
        return Step(name, command(stage, full_args), spec.engine, output, fp)

    def reusable(self, st: Step) -> dict[str, Any] | None:
        """The step's record when a previous run finished it and its output is still committed."""
        url = self.record_url(st.name, st.fingerprint)
        record = storage.read_json(url) if storage.exists(url) else None
        if record and storage.is_committed(record["output"]):
            return record
        return None

    def step(
        self,
        name: str,
        stage: str,
        args: dict[str, Any],
        output_arg: str | None,
        upstream: tuple[Step, ...] = (),
        output_key: str | Callable[[str, dict[str, Any]], str] = "output",
        may_run: bool = True,
    ) -> Step:
        """Run (or reuse) one stage. The step's output is ``output_key`` of the job's result (or
        the planned URL when absent), or what ``output_key(planned_url, result)`` returns. With
        ``may_run`` false the step must be reusable (``--from`` / ``--only`` left it out)."""
        st = self.plan(name, stage, args, output_arg, upstream)
        planned = st.output
        record = self.reusable(st)
        if not record and not may_run:
            raise StepNotDone(
                f"{name} is not done for these settings (no committed output under "
                f"{storage.redact(self.run_url)} with fingerprint {st.fingerprint}), and "
                f"--from/--only leave it out: run from {name} (--from {name}) or without --from"
            )
        if record:
            st.reused, st.result, st.output = True, record["result"], record["output"]
            st.wall_s = record["wall_s"]
            print(f"[pipeline] {name}: reusing committed output {st.output}", flush=True)
        else:
            print(f"[pipeline] {name}: running {' '.join(st.argv)}", flush=True)
            t0 = time.perf_counter()
            try:
                logs = self.execute(st)
            except (RuntimeError, TimeoutError) as e:
                raise StepFailed(
                    f"{name} did not finish ({e}); what it committed is kept: run the same "
                    "command again to resume it"
                ) from e
            st.wall_s = round(time.perf_counter() - t0, 2)
            st.result = parse_result(logs)
            if callable(output_key):
                st.output = output_key(planned, st.result)
            else:
                st.output = st.result.get(output_key) or planned
            if not storage.is_committed(st.output):
                raise RuntimeError(f"{name} finished but {st.output} has no committed manifest")
            storage.write_json(
                self.record_url(name, st.fingerprint),
                {"output": st.output, "result": st.result, "wall_s": st.wall_s, "argv": st.argv},
            )
            print(f"[pipeline] {name}: done in {st.wall_s:.1f}s -> {st.output}", flush=True)
        self.steps[name] = st
        return st

    def skip(self, name: str, output: str, fingerprint: str, reason: str) -> Step:
        """A step the plan does not run: ``output`` (an existing artifact) stands for its output
        and ``fingerprint`` for its identity in the downstream steps' fingerprints."""
        st = Step(name, [], "ray", output, fingerprint, skipped=reason)
        print(f"[pipeline] {name}: skipped ({reason}); using {output}", flush=True)
        self.steps[name] = st
        return st

    def execute(self, st: Step) -> str:
        """Run the step's command; returns its log. Ray stages go to the job API when there is
        one; Beam (and every stage without a Ray address) runs as a local process."""
        if st.engine == "ray" and self.ray_address:
            from distil.ops.submit import submit_ray_job

            _, logs = submit_ray_job(
                self.ray_address,
                st.argv,
                env_vars=ray_job_env(self.env),
                step_key=f"{self.run_url}/{st.name}-{st.fingerprint}",
            )
            return logs
        return run_local(st.name, local_argv(st.argv), self.env)


def run_local(name: str, argv: list[str], env_vars: dict[str, str]) -> str:
    """Run ``argv`` in this process's working directory and environment plus ``env_vars``, echoing
    its output; returns the output, raises on a non-zero exit. RAY_ADDRESS is dropped so a job
    starts its own embedded Ray instead of joining whatever cluster our caller points at."""
    env = dict(os.environ, **env_vars)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        raise RuntimeError(f"{name} failed with exit code {proc.returncode}")
    return "".join(lines)
