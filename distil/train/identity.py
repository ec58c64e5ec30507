"""Run identity of ``distil distil``: which settings and inputs a run name stands for.

Ray Train resumes whatever sits under ``storage_path/run_name``, so a name that outlives its
settings would hand back a student trained on another cache or with another loss. The default
name is therefore derived (``distil-<fingerprint>``, the way the demo names its steps) from

* the config fields that change the trained student (loss, optimisation, seed, student depth,
  ``max_steps`` — the LR schedule decays to it), and
* the fingerprints of the inputs: the teacher cache's key (after following a ``latest.json``
  pointer), or the prepared data's fingerprint in online mode, and ``--teacher`` when given.

Left out: where things go (``output``, ``storage_path``, ``run_name``; input URLs enter by their
fingerprints, so a copied cache is the same input), how often the job logs, evaluates and
checkpoints (eval and checkpoints never touch the weights), the hardware (``num_workers``,
``use_gpu``, ``cpus_per_worker``, ``placement_strategy``, ``gpu_wait_s``, ``max_failures``: a
run may resume on a smaller or bigger
cluster), and fields the mode ignores (``mask_prob`` in cached mode). Renamed fields enter under
their old names (``StageConfig.fingerprint_dump``), so a rename changes no run's identity.
``num_workers`` and ``use_gpu`` are recorded anyway: a resume that changes them is logged,
because the global batch is ``batch_size x grad_accum x num_workers``.

Every checkpoint carries the identity (``run_identity.json``, written by the job); resuming or
re-exporting a run whose checkpoint says otherwise is refused with the differences listed.
"""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.config import ConfigError
from distil.packaged import resolve_model_ref
from distil.teacher.cache import resolve_cache_url
from distil.train.config import DistilConfig

log = logging.getLogger("distil.train.identity")

IDENTITY_FILE = "run_identity.json"  # in every checkpoint dir
IDENTITY_KIND = "distil_run"

NOT_IDENTITY = frozenset(
    {
        # locations: inputs enter by fingerprint (``inputs``), outputs do not change training
        "cache",
        "data",
        "teacher",
        "output",
        "storage_path",
        "run_name",
        # cadence of logging / evaluation / checkpoints: no effect on the weights
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        # safety switches: the teacher itself enters by fingerprint when given, the cache's
        # sample temperature by its key
        "allow_teacher_mismatch",
        "allow_temperature_mismatch",
        # hardware and fault tolerance
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "placement_strategy",
        "gpu_wait_s",
        "max_failures",
        # how the step is executed: the same loss and gradients (within float rounding)
        "compile",
        "ddp_bf16_grads",
    }
)
IGNORED_IN_CACHED_MODE = frozenset({"mask_prob"})
RECORDED = ("num_workers", "use_gpu")  # kept with the identity, compared only to log a change


class RunMismatchError(ConfigError):
    """A run name already holds a checkpoint trained with other settings or inputs."""


class TeacherMismatchError(ConfigError):
    """The teacher is not the one whose logits the cache holds."""


class TemperatureMismatchError(ConfigError):
    """The cache cannot serve KD at the run's temperature."""


@dataclass(frozen=True)
class RunIdentity:
    fields: dict[str, Any]
    inputs: dict[str, str]
    recorded: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return storage.fingerprint({"fields": self.fields, "inputs": self.inputs})

    @property
    def default_name(self) -> str:
        return f"distil-{self.fingerprint}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": IDENTITY_KIND,
            "fingerprint": self.fingerprint,
            "fields": self.fields,
            "inputs": self.inputs,
            "recorded": self.recorded,
        }


def teacher_fingerprint(ref: str) -> str:
    """A committed model dir's manifest fingerprint; else the weights hash of a local dir
    (``packaged:`` included), else a listing (names, sizes, ETags) of a remote one."""
    url = resolve_model_ref(ref)
    if storage.is_committed(url):
        fp = storage.read_manifest(url).get("fingerprint")
        if fp:
            return str(fp)
    if storage.protocol_of(url) == "file":
        from distil.teacher.load import weights_sha256

        return weights_sha256(storage.get_fs(url)[1])[:16]
    fs, path = storage.get_fs(url)
    listing = sorted(
        (posixpath.relpath(p, path), info.get("size"), str(info.get("ETag", "")))
        for p, info in fs.find(path, detail=True).items()
    )
    if not listing:
        raise FileNotFoundError(f"teacher {storage.redact(url)} is empty or missing")
    return storage.fingerprint(listing)


def input_fingerprints(cfg: DistilConfig) -> dict[str, str]:
    inputs: dict[str, str] = {}
    if cfg.mode == "cached":
        manifest = storage.read_manifest(resolve_cache_url(cfg.cache))
        inputs["cache"] = str(manifest.get("key") or manifest["fingerprint"])
    else:
        inputs["data"] = str(storage.read_manifest(cfg.data)["fingerprint"])
    if cfg.teacher:
        inputs["teacher"] = teacher_fingerprint(cfg.teacher)
    return inputs


def run_identity(cfg: DistilConfig) -> RunIdentity:
    """The identity of the run ``cfg`` describes (reads the inputs' manifests)."""
    skip = NOT_IDENTITY | (IGNORED_IN_CACHED_MODE if cfg.mode == "cached" else frozenset())
    fields = cfg.fingerprint_dump(exclude=set(skip))
    recorded = {k: getattr(cfg, k) for k in RECORDED}
    return RunIdentity(fields=fields, inputs=input_fingerprints(cfg), recorded=recorded)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name: checkpoint X, now Y`` for every field or input that differs."""
    out = []
    for section in ("fields", "inputs"):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                name = key if section == "fields" else f"{key} (input fingerprint)"
                out.append(
                    f"{name}: checkpoint {a.get(key, '<absent>')!r}, now {b.get(key, '<absent>')!r}"
                )
    return out


def check_resume(recorded: dict[str, Any] | None, current: RunIdentity, where: str) -> None:
    """Refuse to resume (or re-export) the checkpoint at ``where`` unless it was trained with
    ``current``'s settings and inputs; log a change of the recorded hardware fields."""
    fix = (
        "Fix: rerun with that checkpoint's settings, or start a new run: pass another "
        "--run-name, or leave --run-name unset (the default name is derived from the settings "
        "and inputs, so a changed run gets its own)."
    )
    if recorded is None:
        raise RunMismatchError(
            f"checkpoint {where} has no {IDENTITY_FILE} (written before runs recorded their "
            f"settings), so it cannot be checked against this config. {fix}"
        )
    if recorded.get("fingerprint") != current.fingerprint:
        diffs = differences(recorded, current.to_json()) or [
            f"fingerprint: checkpoint {recorded.get('fingerprint')!r}, now {current.fingerprint!r}"
        ]
        raise RunMismatchError(
            f"checkpoint {where} was trained with other settings or inputs than this config:\n  "
            + "\n  ".join(diffs)
            + f"\n{fix}"
        )
    old = recorded.get("recorded") or {}
    for key, now in current.recorded.items():
        if key in old and old[key] != now:
            log.warning("resuming with %s=%r (checkpoint: %r)", key, now, old[key])


def check_worker_count(recorded: dict[str, Any] | None, current: RunIdentity, where: str) -> None:
    """Refuse to *train on* from the checkpoint at ``where`` with another worker count (a
    finished run may be re-exported with any): a rank's data order and its saved position are
    functions of the world size, so another count would repeat or skip rows of the epoch."""
    old = (recorded or {}).get("recorded") or {}
    now = current.recorded["num_workers"]
    if "num_workers" in old and old["num_workers"] != now:
        raise RunMismatchError(
            f"checkpoint {where} was trained on {old['num_workers']} worker(s), this config "
            f"asks for {now}. Each worker reads its own share of the epoch and the checkpoint "
            "holds a position in that share, so resuming on another worker count would repeat "
            f"or skip rows. Fix: resume with --num-workers {old['num_workers']} (same global "
            "batch), or start a new run: pass another --run-name."
        )


def teacher_weights_sha256(ref: str) -> str:
    """The weights hash ``distil logits`` keys a cache with (``distil.teacher.load``), of the
    teacher at ``ref`` (a remote one is copied into the local model cache once)."""
    from distil.teacher.load import _local_copy, weights_sha256

    return weights_sha256(_local_copy(resolve_model_ref(ref)))


def check_cache_teacher(
    manifest: dict[str, Any], cache_url: str, teacher: str, sha256: str, allow: bool
) -> None:
    """Refuse (or with ``allow`` only log) a teacher whose weights hash differs from the one the
    cache manifest records: the student would be built from and evaluated against one model
    while learning another's logits."""
    info = manifest.get("teacher") or {}
    recorded = info.get("weights_sha256") if isinstance(info, dict) else None
    if not recorded or recorded == sha256:
        return
    made_by = info.get("ref") or "the teacher recorded in its manifest"
    msg = (
        f"teacher {storage.redact(teacher)} has weights sha256 {sha256}, but the teacher cache "
        f"{storage.redact(cache_url)} was built by a teacher with weights sha256 {recorded} "
        f"({made_by}). Fix: pass the teacher the cache was built with as --teacher, rebuild the "
        f"cache with `distil logits --teacher {storage.redact(teacher)}`, or pass "
        "--allow-teacher-mismatch to train anyway."
    )
    if not allow:
        raise TeacherMismatchError(msg)
    log.warning("--allow-teacher-mismatch: %s", msg)


def check_cache_temperature(
    manifest: dict[str, Any], cache_url: str, temperature: float, allow_mismatch: bool
) -> None:
    """Refuse a KD temperature the cache cannot serve: without the teacher's log-partition at
    T its tail mass at T is unknown, and ids sampled at another temperature make the estimate
    importance-weighted (refused unless ``allow_mismatch``; then only logged)."""
    sparsity = manifest.get("sparsity") or {}
    served = [float(t) for t in sparsity.get("kd_temperatures", [1.0])]
    url = storage.redact(cache_url)
    if not any(math.isclose(temperature, t, rel_tol=1e-6) for t in served):
        wanted = ",".join(f"{t:g}" for t in sorted({*served, temperature}))
        raise TemperatureMismatchError(
            f"--temperature {temperature:g}: the teacher cache {url} serves KD only at "
            f"T in {served} (its manifest's sparsity.kd_temperatures; a cache without them "
            f"predates them and serves T = 1). Fix: rebuild it with `distil logits "
            f"--kd-temperatures {wanted}`, or run at one of {served}."
        )
    drawn_at = sparsity.get("temperature")
    if sparsity.get("mode") != "sampled" or math.isclose(
        float(drawn_at or 1.0), temperature, rel_tol=1e-6
    ):
        return
    msg = (
        f"the sampled teacher cache {url} drew its ids at T={float(drawn_at or 1.0):g}, but this "
        f"run distils at --temperature {temperature:g}: the counts would be importance-"
        "reweighted (self-normalised over K draws: biased, high variance). Fix: rebuild the "
        f"cache with `distil logits --sample-temperature {temperature:g}`, run at "
        f"--temperature {float(drawn_at or 1.0):g}, or pass --allow-temperature-mismatch."
    )
    if not allow_mismatch:
        raise TemperatureMismatchError(msg)
    log.warning("--allow-temperature-mismatch: %s", msg)


class MissingSketchError(ConfigError):
    """``alpha_cos > 0`` in cached mode, but the cache has no hidden-state sketch."""


def check_cache_sketch(manifest: dict[str, Any], cache_url: str, alpha_cos: float) -> None:
    """Refuse a cosine weight the cache cannot serve: without the teacher's hidden-state sketch
    there is no cosine term, and silently training without it is another recipe."""
    dims = int((manifest.get("sparsity") or {}).get("hidden_sketch_dims", 0))
    if alpha_cos > 0 and not dims:
        raise MissingSketchError(
            f"--alpha-cos {alpha_cos:g}: the teacher cache {storage.redact(cache_url)} has no "
            "hidden-state sketch (its manifest's sparsity.hidden_sketch_dims is 0 or absent), so "
            "the cosine loss cannot be computed from it. Fix: rebuild the cache with `distil "
            "logits --hidden-sketch-dims N` (e.g. 16), or pass --alpha-cos 0."
        )


def cached_sketch(cache: Any, alpha_cos: float):
    """The sketch matrix ``R`` (a torch tensor) the cached cosine term needs, None when
    ``alpha_cos`` is 0; refuses a cache without one (``check_cache_sketch``)."""
    import torch

    check_cache_sketch(cache.manifest, cache.url, alpha_cos)
    return torch.from_numpy(cache.sketch_matrix) if alpha_cos > 0 else None


def check_sketch_size(matrix: Any, hidden_size: int, cache_url: str) -> None:
    if matrix.shape[1] != hidden_size:
        raise ConfigError(
            f"the teacher cache {storage.redact(cache_url)} sketches hidden states of size "
            f"{matrix.shape[1]}, but the student's hidden size is {hidden_size}: the cosine term "
            "compares the two, so the student must keep the teacher's hidden size (it is built "
            "from the teacher's layers). Fix: use the cache's teacher, or pass --alpha-cos 0."
        )


def teacher_ref(cfg: DistilConfig) -> str:
    """The teacher to initialise from: ``cfg.teacher``, else what the cache manifest records."""
    if cfg.teacher:
        return cfg.teacher
    manifest = storage.read_manifest(cfg.cache)
    info = manifest.get("teacher") or {}
    for key in ("url", "path", "ref", "model"):
        if isinstance(info, dict) and info.get(key):
            return info[key]
    if isinstance(info, str) and info:
        return info
    raise ValueError(f"{cfg.cache}: manifest names no teacher; pass --teacher")
