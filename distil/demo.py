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
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from distil import storage
from distil.config import StageConfig

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "DISTIL_RESULT "


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
            st.output = st.result.get("output_url", output)
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
