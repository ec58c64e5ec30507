"""MLflow tracking for every stage: on when a tracking URI is set, absent otherwise.

``MLFLOW_TRACKING_URI`` (or a stage's ``--tracking-uri``) turns it on; without one this module
never imports mlflow and every call here is a no-op, so an untracked run pays nothing.

One experiment per pipeline (``MLFLOW_EXPERIMENT_NAME``, default ``distil``). A stage run is
an MLflow run named after the stage; with a run group (``--run-group NAME`` or
``DISTIL_RUN_GROUP``, which ``distil demo`` sets for its stages) it is nested under the group's
parent run, found by its ``distil.run_group`` tag or created by the first stage that needs it.

Tracking never breaks a run: the first failed call to the tracking server (down, refusing the
credentials, rejecting a value) logs one WARNING and switches that stage run's tracker off for the
rest of the process; the stage's own JSON outputs stay the source of truth. Clients authenticate with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` from their environment (never
through a Ray runtime env: Ray shows those in its job records).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from distil import __version__

log = logging.getLogger("distil.tracking")

URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
GROUP_ENV = "DISTIL_RUN_GROUP"
DEFAULT_EXPERIMENT = "distil"
GROUP_TAG = "distil.run_group"
STAGE_TAG = "distil.stage"
# A tracking server that is down must cost seconds, not MLflow's default of 7 retries with
# exponential backoff and a 120 s timeout per request; a value the user set wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
# "module:function" of each stage's run -> the stage's name in MLflow (the CLI's stage names)
STAGES = {
    "distil.jobs.prepare:run": "prepare",
    "distil.jobs.adapt_teacher:run": "adapt_teacher",
    "distil.jobs.teacher_logits:run": "logits",
    "distil.jobs.distil:run": "distil",
    "distil.jobs.finetune:run": "finetune",
    "distil.pipelines.score_reviews:run": "score",
    "distil.jobs.promote:run": "promote",
}


def stage_name(run: Callable[..., Any]) -> str:
    module = run.__module__
    if module == "__main__":  # `python -m distil.jobs.prepare`: the module's real name
        import sys

        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return STAGES.get(f"{module}:{run.__name__}", module.rsplit(".", 1)[-1])


def tracking_uri() -> str | None:
    return os.environ.get(URI_ENV) or None


def enabled() -> bool:
    return tracking_uri() is not None


def apply_flags(uri: str | None, group: str | None) -> None:
    """``--tracking-uri`` / ``--run-group`` win over the environment; they are put there so the
    stage's child processes (an embedded Ray's workers) see the same settings."""
    if uri:
        os.environ[URI_ENV] = uri
    if group:
        os.environ[GROUP_ENV] = group


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1]}`` -> ``{"a.b": 1, "c": [1]}`` (lists stay whole)."""
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as MLflow params: flattened, each value as MLflow shows it (JSON for lists and
    mappings, ``str`` otherwise), cut to MLflow's length limit."""
    out = {}
    for k, v in flatten(config).items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[k] = text[:MAX_PARAM_CHARS]
    return out


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``values`` (flattened; booleans are not metrics)."""
    out = {}
    for k, v in flatten(values).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[k] = float(v)
    return out


class Tracker:
    """Logs to one MLflow run; the first failure warns once and disables it (see module doc).
    ``run_id`` None: a tracker that does nothing (tracking off, or it failed to start)."""

    def __init__(self, run_id: str | None, uri: str | None = None):
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self._client: Any = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.uri)
        return self._client

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if self.run_id is None:
            return None
        try:
            return fn(self.client())
        except Exception as e:  # any failure of the tracking side must not end the stage
            warn_once(self, what, e)
            self.run_id = None
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params_of(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            chunk = items[i : i + 100]
            self._call("log params", lambda c, chunk=chunk: c.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in numeric(metrics).items()]
        if items:
            self._call("log metrics", lambda c: c.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if v not in (None, "")]
        if items:
            self._call("set tags", lambda c: c.log_batch(self.run_id, tags=items))

    def log_json(self, obj: Any, name: str) -> None:
        """``obj`` as the JSON artifact ``name`` (on the server's artifact store)."""
        text = json.dumps(obj, indent=2, default=str)
        self._call("log artifact", lambda c: c.log_text(self.run_id, text, name))

    def log_file(self, path: str, artifact_path: str | None = None) -> None:
        self._call("log artifact", lambda c: c.log_artifact(self.run_id, path, artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        self._call("end run", lambda c: c.set_terminated(self.run_id, status))


def warn_once(tracker: Tracker, what: str, error: Exception) -> None:
    log.warning(
        "MLflow tracking at %s failed (%s: %s: %s); this run goes on untracked, its own "
        "outputs are complete",
        tracker.uri,
        what,
        type(error).__name__,
        str(error).splitlines()[0][:300] if str(error) else "",
    )


def make_client(uri: str | None) -> Any:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str | None = None) -> str:
    name = name or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another stage created it in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def group_run_id(client: Any, exp_id: str, group: str) -> str:
    """The parent run of ``group`` in the experiment, created (RUNNING) when there is none."""
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{GROUP_TAG}` = '{group}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=group,
        tags={GROUP_TAG: group, STAGE_TAG: "pipeline", "distil.version": __version__},
    )
    return run.info.run_id


def start(stage: str, group: str | None = None) -> Tracker:
    """A new MLflow run for ``stage`` (nested under ``group``'s parent run when there is a
    group); a no-op tracker when tracking is off or the server cannot be reached."""
    uri = tracking_uri()
    if uri is None:
        return Tracker(None)
    group = group or os.environ.get(GROUP_ENV) or None
    probe = Tracker("starting", uri)

    def create(client: Any) -> str:
        exp_id = experiment_id(client)
        tags = {STAGE_TAG: stage, "distil.version": __version__}
        if group:
            tags[GROUP_TAG] = group
            tags["mlflow.parentRunId"] = group_run_id(client, exp_id, group)
        return client.create_run(exp_id, run_name=stage, tags=tags).info.run_id

    return Tracker(probe._call("start run", create), uri)


def group_tracker() -> Tracker:
    """The current run group's parent run (for what belongs to the pipeline as a whole, such as
    the demo's report); a no-op tracker without tracking or a group."""
    uri, group = tracking_uri(), os.environ.get(GROUP_ENV)
    if uri is None or not group:
        return Tracker(None)
    probe = Tracker("starting", uri)
    run_id = probe._call("find the run group", lambda c: group_run_id(c, experiment_id(c), group))
    return Tracker(run_id, uri)


# What the summary's string values are tagged as (URLs and identities); anything else in a summary
# is either a metric (numbers) or stays in the summary artifact.
TAG_KEYS = (
    "url", "output", "input", "fingerprint", "key", "sha", "cache", "checkpoint", "name", "version",
)  # fmt: skip


def summary_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in flatten(summary).items():
        leaf = k.rsplit(".", 1)[-1].lower()
        if isinstance(v, str) and (
            "://" in v or any(leaf.endswith(t) or leaf.startswith(t) for t in TAG_KEYS)
        ):
            out[f"distil.{k}"] = v
    return out


def config_tags(config: Any) -> dict[str, str]:
    """The stage's inputs and outputs (its ``PATH_FIELDS``) as tags, lists joined by commas."""
    out = {}
    for name in getattr(config, "PATH_FIELDS", ()):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if value:
            out[f"distil.{name}"] = str(value)
    return out


def ray_job_tags() -> dict[str, str]:
    """The Ray job this stage ran as, when it used Ray."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    ctx = ray.get_runtime_context()
    tags = {"distil.ray_job_id": ctx.get_job_id()}
    submission = getattr(ctx, "get_submission_id", lambda: None)()
    if submission:
        tags["distil.ray_submission_id"] = submission
    return tags


_current: Tracker = Tracker(None)


def current() -> Tracker:
    """The tracker of the stage this process is running (a no-op one outside ``stage_run``)."""
    return _current


@contextlib.contextmanager
def stage_run(stage: str, config: Any) -> Iterator[Tracker]:
    """One stage's MLflow run around its body: params = the config, tags = its inputs/outputs;
    ``record(summary)`` adds the summary. FAILED when the body raises (which is re-raised)."""
    global _current
    tracker = start(stage)
    if not tracker.active:
        yield tracker
        return
    dump = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    tracker.log_params(dump)
    tracker.set_tags(config_tags(config))
    previous, _current = _current, tracker
    try:
        yield tracker
    except BaseException:
        tracker.finish("FAILED")
        raise
    else:
        tracker.finish()
    finally:
        _current = previous


def rates(summary: Mapping[str, Any]) -> dict[str, float]:
    """Throughput a summary implies but does not state: rows/s of a scoring run."""
    rows, secs = summary.get("rows_in"), summary.get("wall_s")
    if isinstance(rows, (int, float)) and isinstance(secs, (int, float)) and secs > 0:
        return {"rows_per_s": rows / secs}
    return {}


def record(tracker: Tracker, summary: Mapping[str, Any], artifact: str = "summary.json") -> None:
    """A stage's summary: its numbers as final metrics, its URLs/identities as tags, the whole
    summary as a JSON artifact."""
    if not tracker.active:
        return
    tracker.log_metrics({**summary, **rates(summary)})
    tracker.set_tags({**summary_tags(summary), **ray_job_tags()})
    tracker.log_json(dict(summary), artifact)


def tracked(stage: str, run: Callable[[Any], dict[str, Any]], config: Any) -> dict[str, Any]:
    """``run(config)`` as one tracked stage (untracked, and mlflow never imported, without a
    tracking URI)."""
    if not enabled():
        return run(config)
    with stage_run(stage, config) as tracker:
        summary = run(config)
        record(tracker, summary)
    return summary


# What a training step reports that is not a curve: positions and bookkeeping.
NOT_CURVES = (
    "step",
    "start_step",
    "steps_run",
    "total_steps",
    "eval_step",
    "tokens",
    "done",
    "world_size",
)


def step_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
    """A training report's curves at ``step``: the training numbers, and the evaluation's only
    when it was taken at this step (a report repeats the latest one under ``eval_step``)."""
    fresh_eval = metrics.get("eval_step", step) == step
    return {
        k: v
        for k, v in numeric(metrics).items()
        if k not in NOT_CURVES and (fresh_eval or not k.startswith("eval_"))
    }


def worker_target() -> dict[str, str] | None:
    """What a Ray Train worker needs to log live metrics into the current stage run (no
    credentials: the worker reads those from its own environment); None when untracked."""
    t = current()
    if not t.active or t.uri is None:
        return None
    return {"uri": t.uri, "run_id": t.run_id}


def worker_tracker(target: Mapping[str, str] | None, rank: int) -> Tracker:
    """Rank 0's tracker for ``worker_target()``; a no-op one on other ranks or without target."""
    if not target or rank != 0:
        return Tracker(None)
    return Tracker(target["run_id"], target["uri"])
